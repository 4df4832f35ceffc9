//! Builds the host emulator (feature `emulator`, on by default): the runtime in emu/ plus every
//! kernel family in cuda/ compiled as C++, each family in its own namespace (as NVRTC compiles
//! each source on its own), with a registry that maps kernel names to launch trampolines.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[path = "src/scan.rs"]
mod scan;

fn main() {
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-changed=cuda");
    println!("cargo:rerun-if-changed=emu");
    println!("cargo:rerun-if-changed=src/scan.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cuda = root.join("cuda");
    let mut families: Vec<PathBuf> = std::fs::read_dir(&cuda)
        .expect("kernels-cu/cuda is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    families.sort();
    write_defines(&families, &out.join("defines.rs"));
    if std::env::var_os("CARGO_FEATURE_EMULATOR").is_none() {
        return;
    }

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .include(&cuda)
        .include(root.join("emu"))
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .flag("-Wno-unused-parameter")
        .file(root.join("emu/runtime.cpp"));
    if std::env::var_os("CARGO_FEATURE_ASAN").is_some() {
        build
            .flag("-fsanitize=address")
            .flag("-fno-omit-frame-pointer");
        // The Rust link drives gcc with -nodefaultlibs, so name the runtime explicitly. It is
        // not first in the library list; emu/runtime.cpp's __asan_default_options turns that
        // check off (verify_asan_link_order=0).
        println!("cargo:rustc-link-lib=dylib=asan");
    }

    let mut registry =
        String::from("#include <cstring>\n#include \"kc_emu.h\"\nnamespace kc_emu_tables {\n");
    let mut tables = Vec::new();
    for path in &families {
        let family = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 file name")
            .to_string();
        let src = std::fs::read_to_string(path).expect("kernel source is readable");
        let names = scan::kernel_names(&src).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let tu = family_unit(&family, path, &names);
        let tu_path = out.join(format!("emu_{family}.cpp"));
        std::fs::write(&tu_path, tu).expect("OUT_DIR is writable");
        build.file(&tu_path);
        let _ = writeln!(
            registry,
            "extern const kc_emu::KernelEntry {family}[];\nextern const unsigned {family}_len;"
        );
        tables.push(family);
    }
    registry.push_str("}  // namespace kc_emu_tables\n\nstatic const kc_emu::KernelEntry* entry_at(unsigned i) {\n");
    for family in &tables {
        let _ = writeln!(
            registry,
            "  if (i < kc_emu_tables::{family}_len) return &kc_emu_tables::{family}[i];\n  i -= kc_emu_tables::{family}_len;"
        );
    }
    registry.push_str("  return nullptr;\n}\n\n");
    registry.push_str(
        "extern \"C\" const kc_emu::KernelEntry* kc_emu_kernel_at(unsigned i) { return entry_at(i); }\n\
         extern \"C\" const kc_emu::KernelEntry* kc_emu_find(const char* name) {\n\
         \x20 for (unsigned i = 0;; i++) {\n\
         \x20   const kc_emu::KernelEntry* e = entry_at(i);\n\
         \x20   if (!e || std::strcmp(e->name, name) == 0) return e;\n\
         \x20 }\n}\n",
    );
    let reg_path = out.join("emu_registry.cpp");
    std::fs::write(&reg_path, registry).expect("OUT_DIR is writable");
    build.file(&reg_path);
    build.compile("kc_emu");
}

/// `src/defines.rs`'s content: a module per kernel family with its integer `#define`s, so the
/// launchers read the launch geometry from the sources instead of repeating it.
fn write_defines(families: &[PathBuf], path: &Path) {
    let mut s = String::new();
    for f in families {
        let family = f
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 file name");
        let src = std::fs::read_to_string(f).expect("kernel source is readable");
        let defines = scan::integer_defines(&src);
        if defines.is_empty() {
            continue;
        }
        let _ = writeln!(s, "/// Integer `#define`s of `cuda/{family}.cu`.");
        let _ = writeln!(s, "pub mod {family} {{");
        for (name, value) in defines {
            let _ = writeln!(s, "    pub const {name}: usize = {value};");
        }
        let _ = writeln!(s, "}}");
    }
    std::fs::write(path, s).expect("OUT_DIR is writable");
}

fn family_unit(family: &str, path: &Path, names: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "#include \"common.cuh\"");
    let _ = writeln!(s, "namespace kc_fam_{family} {{");
    let _ = writeln!(s, "#include \"{}\"", path.display());
    let _ = writeln!(s, "}}  // namespace kc_fam_{family}");
    let _ = writeln!(s, "namespace kc_emu_tables {{");
    let _ = writeln!(s, "extern const kc_emu::KernelEntry {family}[] = {{");
    for n in names {
        let _ = writeln!(s, "  KC_EMU_ENTRY(kc_fam_{family}, {n}),");
    }
    let _ = writeln!(s, "}};");
    let _ = writeln!(s, "extern const unsigned {family}_len = {};", names.len());
    let _ = writeln!(s, "}}  // namespace kc_emu_tables");
    s
}
