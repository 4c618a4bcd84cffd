//! Embeds the Python worker (python/boot.py and every module of python/hurricane) into the binary.
//!
//! Why generated: a module added to python/hurricane must ship without anyone editing a list, and the
//! package's `__version__` must never drift from the crate's.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn collect(dir: &Path, package: &str, out: &mut Vec<(String, bool, PathBuf)>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if path.join("__init__.py").is_file() {
                collect(&path, &format!("{package}.{name}"), out);
            }
        } else if let Some(stem) = name.strip_suffix(".py") {
            if stem == "__init__" {
                out.push((package.to_string(), true, path.clone()));
            } else {
                out.push((format!("{package}.{stem}"), false, path.clone()));
            }
        }
    }
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let python = root.join("python");
    println!("cargo:rerun-if-changed={}", python.display());
    let mut modules = Vec::new();
    collect(&python.join("hurricane"), "hurricane", &mut modules);

    let init = fs::read_to_string(python.join("hurricane/__init__.py")).unwrap();
    let version = env::var("CARGO_PKG_VERSION").unwrap();
    assert!(
        init.contains(&format!("__version__ = \"{version}\"")),
        "python/hurricane/__init__.py must say __version__ = \"{version}\" (Cargo.toml's version)"
    );

    let mut code = String::from("/// (module name, is package, source), in a stable order.\n");
    code.push_str("pub static MODULES: &[(&str, bool, &str)] = &[\n");
    for (name, is_pkg, path) in &modules {
        println!("cargo:rerun-if-changed={}", path.display());
        writeln!(
            code,
            "    ({name:?}, {is_pkg}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    code.push_str("];\n");
    let boot = python.join("boot.py");
    writeln!(
        code,
        "pub static BOOT: &str = include_str!({:?});",
        boot.display().to_string()
    )
    .unwrap();
    fs::write(
        PathBuf::from(env::var("OUT_DIR").unwrap()).join("bundle.rs"),
        code,
    )
    .unwrap();
}
