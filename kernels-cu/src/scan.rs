//! Finds the kernel entry points in a CUDA source: every `extern "C" __global__ void NAME(`,
//! with an optional `__launch_bounds__(..)` before the name. Shared by build.rs (to register the
//! kernels with the emulator) and by the tests (to check the entry table against the sources).

/// Removes `//` and `/* */` comments (string literals in kernel sources hold no comment markers).
pub fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'/' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'*' {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
            out.push(' ');
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The names of the `__global__` functions of `src`, in source order. Errors name the problem:
/// a kernel that is not `extern "C"` or not `void`.
pub fn kernel_names(src: &str) -> Result<Vec<String>, String> {
    let text = strip_comments(src);
    let mut names = Vec::new();
    let mut rest = text.as_str();
    while let Some(pos) = rest.find("__global__") {
        let before = rest[..pos].trim_end();
        let after = &rest[pos + "__global__".len()..];
        let Some(after) = after.trim_start().strip_prefix("void") else {
            return Err("a __global__ function does not return void".into());
        };
        let mut after = after.trim_start();
        if let Some(lb) = after.strip_prefix("__launch_bounds__") {
            let close = lb
                .find(')')
                .ok_or("unterminated __launch_bounds__(..)".to_string())?;
            after = lb[close + 1..].trim_start();
        }
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..end];
        if name.is_empty() || !after[end..].trim_start().starts_with('(') {
            return Err("could not read the name of a __global__ function".into());
        }
        if !before.ends_with("extern \"C\"") {
            return Err(format!("kernel `{name}` is not declared extern \"C\""));
        }
        names.push(name.to_string());
        rest = &after[end..];
    }
    Ok(names)
}
