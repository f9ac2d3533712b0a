//! What an image is cached as: its [`Identity`].

use sha2::{Digest, Sha256};

use crate::reference::ImageRef;

/// The identity of a cached image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// `registry/repository@digest` when pinned, else `registry/repository:tag`,
    /// then ` (arch)`.
    pub text: String,
    /// sha256 of `text`: the file-name-safe key.
    pub key: String,
}

impl Identity {
    pub fn of(image: &ImageRef, arch: &str) -> Self {
        let name = format!("{}/{}", image.registry, image.repository);
        let text = match (&image.manifest_digest, &image.tag) {
            (Some(digest), _) => format!("{name}@{digest} ({arch})"),
            (None, Some(tag)) => format!("{name}:{tag} ({arch})"),
            (None, None) => format!("{name}:latest ({arch})"),
        };
        Self::from_text(text)
    }

    /// The identity an index record names (its `identity` field).
    pub fn from_text(text: impl Into<String>) -> Self {
        let text = text.into();
        let key = hex::encode(Sha256::digest(text.as_bytes()));
        Self { text, key }
    }
}
