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

/// The integer constants a source defines, `#define NAME VALUE` in source order, where VALUE
/// is a decimal literal or `(A op B)` of earlier names and literals with op one of `* / + -`.
/// Other defines (floats, function-like macros, expressions beyond that) are skipped. These
/// are the launch geometry constants (block sizes, tiles, pipeline stages) that the host
/// launchers read instead of repeating.
pub fn integer_defines(src: &str) -> Vec<(String, u64)> {
    let text = strip_comments(src);
    let mut out: Vec<(String, u64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix("#define") else {
            continue;
        };
        let mut parts = rest.trim().splitn(2, char::is_whitespace);
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // a function-like macro
        }
        let term = |t: &str| -> Option<u64> {
            let t = t.trim();
            t.parse::<u64>()
                .ok()
                .or_else(|| out.iter().find(|(n, _)| n == t).map(|&(_, v)| v))
        };
        let value = value.trim();
        let parsed = match value.strip_prefix('(').and_then(|v| v.strip_suffix(')')) {
            Some(expr) => ['*', '/', '+', '-'].iter().find_map(|&op| {
                let (a, b) = expr.split_once(op)?;
                let (a, b) = (term(a)?, term(b)?);
                match op {
                    '*' => a.checked_mul(b),
                    '/' => a.checked_div(b),
                    '+' => a.checked_add(b),
                    _ => a.checked_sub(b),
                }
            }),
            None => value.parse::<u64>().ok(),
        };
        if let Some(v) = parsed {
            out.push((name.to_string(), v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::integer_defines;

    #[test]
    fn integer_defines_reads_literals_and_simple_expressions() {
        let src = "#define A 4 // warps\n#define B (A * 32)\n/* #define C 9 */\n\
                   #define F 1.5f\n#define M(x) ((x) * 2)\n  #define D (B / 8)\n\
                   #define E (-100)\n#define G (B - A)\n";
        let got = integer_defines(src);
        let want = [("A", 4), ("B", 128), ("D", 16), ("G", 124)];
        assert_eq!(
            got,
            want.iter()
                .map(|&(n, v)| (n.to_string(), v))
                .collect::<Vec<_>>()
        );
    }
}
