//! TEST ONLY. A component that exports some other contract, as a plugin
//! built against the wrong WIT would. sifr must refuse to load it and say
//! what it expected.

wit_bindgen::generate!({
    inline: "
        package acme:filter@2.0.0;
        interface filter {
            allow: func(image: string) -> bool;
        }
        world other {
            export filter;
        }
    ",
    world: "other",
});

struct Other;

impl exports::acme::filter::filter::Guest for Other {
    fn allow(_image: String) -> bool {
        true
    }
}

export!(Other);
