//! Hostile components that wit-bindgen cannot make, built from WAT: many
//! memories, many tables, a start function that blocks, names full of
//! terminal escapes. Each is a real `sifr:policy@0.1.0` component (made by
//! wit-component from a core module and the repository's WIT), so sifr
//! loads it as it would a plugin from a site's disk.
// Each test binary that includes this uses some of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The contract, as plugins build against it.
const POLICY_WIT: &str = include_str!("../../../wit/v0.1.0/policy.wit");

/// The two WASI interfaces a blocking start function needs: just the
/// functions it calls, which the host's full interfaces satisfy.
const WASI_IO: &str = "package wasi:io@0.2.0;
interface poll {
  resource pollable { block: func(); }
}";
const WASI_CLOCKS: &str = "package wasi:clocks@0.2.0;
interface monotonic-clock {
  use wasi:io/poll@0.2.0.{pollable};
  type duration = u64;
  subscribe-duration: func(when: duration) -> pollable;
}";

/// A policy plugin's core module, with `configure` running `configure_body`
/// before it answers `ok`, and `decide` trapping. `extra` adds fields
/// (memories, tables, imports, a start function) to the module.
fn module(configure_body: &str, extra: &str) -> String {
    format!(
        r#"(module
  {extra}
  (memory (export "memory") 1)
  (global $bump (mut i32) (i32.const 4096))
  ;; A bump allocator: enough for the host to hand over the settings.
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump
      (i32.and (i32.add (i32.add (global.get $bump) (local.get 3)) (i32.const 7))
               (i32.const -8)))
    (local.get $p))
  ;; `result<_, string>` at address 0, which is zero: `ok`.
  (func (export "sifr:policy/policy@0.1.0#configure") (param i32 i32) (result i32)
    {configure_body}
    (i32.const 0))
  (func (export "sifr:policy/policy@0.1.0#decide") (param i32) (result i32)
    unreachable)
)"#
    )
}

/// Encode `wat` as a component of `world` (in `world_wit`, which may
/// include the WASI packages above).
fn component(wat: &str, world_wit: &str) -> Vec<u8> {
    component_with(POLICY_WIT, wat, world_wit)
}

fn component_with(policy_wit: &str, wat: &str, world_wit: &str) -> Vec<u8> {
    let mut resolve = wit_parser::Resolve::default();
    resolve.push_str("policy.wit", policy_wit).unwrap();
    resolve.push_str("io.wit", WASI_IO).unwrap();
    resolve.push_str("clocks.wit", WASI_CLOCKS).unwrap();
    let package = resolve.push_str("test.wit", world_wit).unwrap();
    let world = resolve.select_world(&[package], Some("test")).unwrap();
    let mut core = wat::parse_str(wat).unwrap();
    wit_component::embed_component_metadata(
        &mut core,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .unwrap();
    wit_component::ComponentEncoder::default()
        .module(&core)
        .unwrap()
        .validate(true)
        .encode()
        .unwrap()
}

const PLAIN_WORLD: &str = "package test:hostile;
world test { export sifr:policy/policy@0.1.0; }";

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `memories` linear memories besides the main one; `configure` grows each
/// by `mib_each` MiB and writes every page, so an unbounded host would hold
/// `memories * mib_each` MiB of resident memory.
pub fn many_memories(dir: &Path, memories: usize, mib_each: u32) -> PathBuf {
    let pages = mib_each * 16;
    let bytes = mib_each << 20;
    let decls: String = (1..=memories)
        .map(|i| format!("(memory $m{i} 1)\n"))
        .collect();
    let fill: String = (1..=memories)
        .map(|i| {
            format!(
                "(drop (memory.grow $m{i} (i32.const {pages})))
                 (memory.fill $m{i} (i32.const 0) (i32.const 1) (i32.const {bytes}))\n"
            )
        })
        .collect();
    let wasm = component(&module(&fill, &decls), PLAIN_WORLD);
    write(dir, &format!("memories-{memories}x{mib_each}.wasm"), &wasm)
}

/// `tables` tables of `elements` elements each.
pub fn many_tables(dir: &Path, tables: usize, elements: u32) -> PathBuf {
    let decls: String = (0..tables)
        .map(|_| format!("(table {elements} funcref)\n"))
        .collect();
    let wasm = component(&module("", &decls), PLAIN_WORLD);
    write(dir, &format!("tables-{tables}x{elements}.wasm"), &wasm)
}

/// A plain plugin with `extra` empty core instances appended: the
/// component is printed as WAT and the instances added at its end, so no
/// index it already uses moves.
pub fn many_instances(dir: &Path, extra: usize) -> PathBuf {
    let plain = component(&module("", ""), PLAIN_WORLD);
    let text = wasmprinter::print_bytes(&plain).unwrap();
    let end = text.rfind(')').unwrap();
    let mut more = String::from("(core module $empty)\n");
    for _ in 0..extra {
        more.push_str("(core instance (instantiate $empty))\n");
    }
    let wasm = wat::parse_str(format!("{}{more})", &text[..end])).unwrap();
    write(dir, &format!("instances-{extra}.wasm"), &wasm)
}

/// A start function that waits an hour on a WASI clock: it blocks while
/// the component is being instantiated, before `configure` is ever called.
pub fn blocking_start(dir: &Path) -> PathBuf {
    let extra = r#"
  (import "wasi:clocks/monotonic-clock@0.2.0" "subscribe-duration"
    (func $subscribe (param i64) (result i32)))
  (import "wasi:io/poll@0.2.0" "[method]pollable.block" (func $block (param i32)))
  (func $wait_an_hour
    (call $block (call $subscribe (i64.const 3600000000000))))
  (start $wait_an_hour)"#;
    let world = "package test:hostile;
world test {
  import wasi:clocks/monotonic-clock@0.2.0;
  export sifr:policy/policy@0.1.0;
}";
    let wasm = component(&module("", extra), world);
    write(dir, "blocking-start.wasm", &wasm)
}

/// A policy plugin that exports the contract as version `version` (the
/// 0.1.0 WIT, renumbered): `configure` accepts anything, `decide` traps.
pub fn exporting_version(dir: &Path, version: &str) -> PathBuf {
    let wit = POLICY_WIT.replace("sifr:policy@0.1.0", &format!("sifr:policy@{version}"));
    let wat = module("", "").replace(
        "sifr:policy/policy@0.1.0#",
        &format!("sifr:policy/policy@{version}#"),
    );
    let world =
        format!("package test:hostile;\nworld test {{ export sifr:policy/policy@{version}; }}");
    let wasm = component_with(&wit, &wat, &world);
    write(dir, &format!("policy-{version}.wasm"), &wasm)
}

/// Terminal escapes and bidi controls, as the tests look for them.
pub const EVIL_NAME: &str = "\u{1b}[2J\u{1b}[31mevil\u{1b}]0;t\u{7}\r\u{202e}gnp.exe";

/// `configure` traps in a function whose name (in the name section, which
/// wasm backtraces print) is [`EVIL_NAME`].
pub fn trap_in_evil_name(dir: &Path) -> PathBuf {
    let wat_name: String = EVIL_NAME
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c.to_string()
            } else {
                format!("\\u{{{:x}}}", c as u32)
            }
        })
        .collect();
    let extra = format!("(func $evil (@name \"{wat_name}\") unreachable)");
    let wasm = component(&module("(call $evil)", &extra), PLAIN_WORLD);
    write(dir, "evil-name.wasm", &wasm)
}

/// A component whose export is named [`EVIL_NAME`]: the parser refuses it
/// with an error that quotes the name.
pub fn evil_export_name(dir: &Path) -> PathBuf {
    use wasm_encoder::{Component, ComponentExportKind, ComponentExportSection, ModuleSection};
    let mut component = Component::new();
    component.section(&ModuleSection(&wasm_encoder::Module::new()));
    let mut exports = ComponentExportSection::new();
    exports.export(EVIL_NAME, ComponentExportKind::Module, 0, None);
    component.section(&exports);
    write(dir, "evil-export.wasm", &component.finish())
}

/// Whether `text` holds anything that could drive a terminal: ESC, CR,
/// other C0/C1 controls but newline and tab, or a bidi control.
pub fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            (c.is_control() && c != '\n' && c != '\t')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
        })
        .collect()
}
