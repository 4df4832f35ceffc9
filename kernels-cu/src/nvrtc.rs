//! A minimal NVRTC binding, loaded with `dlopen` from an explicit path (see [`crate::tools`]).
//! The runtime never needs it: it is for the compile gate and for regenerating the embedded PTX.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};

use crate::sources::{Family, COMMON_HEADER, COMMON_HEADER_NAME};

#[derive(Debug, thiserror::Error)]
pub enum NvrtcError {
    #[error("cannot load NVRTC from {path}: {msg}")]
    Load { path: PathBuf, msg: String },
    #[error("NVRTC ({path}) lacks the symbol {symbol}")]
    Symbol { path: PathBuf, symbol: &'static str },
    #[error("NVRTC {call} failed for {file}: {msg}")]
    Call {
        call: &'static str,
        file: String,
        msg: String,
    },
    #[error("{file} does not compile for {arch}:\n{log}")]
    Compile {
        file: String,
        arch: String,
        log: String,
    },
}

type Prog = *mut c_void;
type CreateFn = unsafe extern "C" fn(
    *mut Prog,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileFn = unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> c_int;
type SizeFn = unsafe extern "C" fn(Prog, *mut usize) -> c_int;
type GetFn = unsafe extern "C" fn(Prog, *mut c_char) -> c_int;
type DestroyFn = unsafe extern "C" fn(*mut Prog) -> c_int;
type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;

/// The loaded library. It stays loaded for the life of the process.
pub struct Nvrtc {
    path: PathBuf,
    create: CreateFn,
    compile: CompileFn,
    log_size: SizeFn,
    log: GetFn,
    ptx_size: SizeFn,
    ptx: GetFn,
    destroy: DestroyFn,
    version: VersionFn,
    error_string: ErrorStringFn,
}

/// NVRTC opens `libnvrtc-builtins.so.<ver>` by name at compile time and relies on its own
/// RUNPATH to find it next to itself. That lookup fails when dlopen is intercepted (e.g. under
/// AddressSanitizer), so load the builtins from the same directory first; NVRTC's later dlopen
/// then finds the library already loaded.
fn preload_builtins(nvrtc: &Path) {
    let Some(dir) = nvrtc.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("libnvrtc-builtins.so") {
            if let Ok(c) = CString::new(e.path().as_os_str().as_encoded_bytes()) {
                // SAFETY: dlopen with a valid C string; the handle is kept for the process life.
                unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            }
        }
    }
}

/// The result of one compile: the PTX text and NVRTC's log (warnings; empty when clean).
#[derive(Debug)]
pub struct Compiled {
    pub ptx: String,
    pub log: String,
}

impl Nvrtc {
    pub fn load(path: &Path) -> Result<Nvrtc, NvrtcError> {
        preload_builtins(path);
        let c_path =
            CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| NvrtcError::Load {
                path: path.to_path_buf(),
                msg: "path contains a NUL byte".into(),
            })?;
        // SAFETY: dlopen with a valid C string; the handle is never closed, so the function
        // pointers below stay valid for the life of the process.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns a C string owned by libc, or null.
            let msg = unsafe {
                let e = libc::dlerror();
                if e.is_null() {
                    "unknown error".to_string()
                } else {
                    CStr::from_ptr(e).to_string_lossy().into_owned()
                }
            };
            return Err(NvrtcError::Load {
                path: path.to_path_buf(),
                msg,
            });
        }
        macro_rules! sym {
            ($name:literal, $ty:ty) => {{
                let cname = concat!($name, "\0");
                // SAFETY: dlsym on a live handle with a NUL-terminated name.
                let p = unsafe { libc::dlsym(handle, cname.as_ptr() as *const c_char) };
                if p.is_null() {
                    return Err(NvrtcError::Symbol {
                        path: path.to_path_buf(),
                        symbol: $name,
                    });
                }
                // SAFETY: the symbol is the NVRTC function of that name; the field's type is its
                // C signature from nvrtc.h.
                unsafe { std::mem::transmute::<*mut c_void, $ty>(p) }
            }};
        }
        Ok(Nvrtc {
            path: path.to_path_buf(),
            create: sym!("nvrtcCreateProgram", CreateFn),
            compile: sym!("nvrtcCompileProgram", CompileFn),
            log_size: sym!("nvrtcGetProgramLogSize", SizeFn),
            log: sym!("nvrtcGetProgramLog", GetFn),
            ptx_size: sym!("nvrtcGetPTXSize", SizeFn),
            ptx: sym!("nvrtcGetPTX", GetFn),
            destroy: sym!("nvrtcDestroyProgram", DestroyFn),
            version: sym!("nvrtcVersion", VersionFn),
            error_string: sym!("nvrtcGetErrorString", ErrorStringFn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (major, minor) of the loaded NVRTC.
    pub fn version(&self) -> (i32, i32) {
        let (mut a, mut b) = (0, 0);
        // SAFETY: two valid out-pointers.
        unsafe { (self.version)(&mut a, &mut b) };
        (a, b)
    }

    fn err(&self, call: &'static str, file: &str, code: c_int) -> NvrtcError {
        // SAFETY: nvrtcGetErrorString returns a static C string for any code.
        let msg = unsafe { CStr::from_ptr((self.error_string)(code)) }
            .to_string_lossy()
            .into_owned();
        NvrtcError::Call {
            call,
            file: file.to_string(),
            msg,
        }
    }

    /// Compiles one family for `arch` (e.g. `"sm_90"` or `"compute_80"`) with
    /// [`crate::ptx::NVRTC_OPTIONS`]; the common header is supplied from memory.
    pub fn compile(&self, family: &Family, arch: &str) -> Result<Compiled, NvrtcError> {
        let file = family.file;
        let nul = |s: &str| {
            CString::new(s).map_err(|_| NvrtcError::Call {
                call: "nvrtcCreateProgram",
                file: file.to_string(),
                msg: "text contains a NUL byte".into(),
            })
        };
        let src = nul(family.source)?;
        let name = nul(file)?;
        let header = nul(COMMON_HEADER)?;
        let header_name = nul(COMMON_HEADER_NAME)?;
        let mut opts = vec![format!("--gpu-architecture={arch}")];
        opts.extend(crate::ptx::NVRTC_OPTIONS.iter().map(|s| s.to_string()));
        let c_opts = opts.iter().map(|o| nul(o)).collect::<Result<Vec<_>, _>>()?;
        let opt_ptrs: Vec<*const c_char> = c_opts.iter().map(|o| o.as_ptr()).collect();
        let mut prog: Prog = std::ptr::null_mut();
        // SAFETY: all strings are NUL-terminated and outlive the call; one header and its name.
        let rc = unsafe {
            (self.create)(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                1,
                &header.as_ptr(),
                &header_name.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(self.err("nvrtcCreateProgram", file, rc));
        }
        // SAFETY: prog is a live program; option pointers are valid for the call.
        let rc = unsafe { (self.compile)(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
        let log = self.read(prog, self.log_size, self.log);
        let result = if rc != 0 {
            Err(NvrtcError::Compile {
                file: file.to_string(),
                arch: arch.to_string(),
                log: log.unwrap_or_default(),
            })
        } else {
            match (self.read(prog, self.ptx_size, self.ptx), log) {
                (Ok(ptx), Ok(log)) => Ok(Compiled { ptx, log }),
                (Err(code), _) | (_, Err(code)) => Err(self.err("nvrtcGetPTX", file, code)),
            }
        };
        // SAFETY: destroys the program created above, once.
        unsafe { (self.destroy)(&mut prog) };
        result
    }

    fn read(&self, prog: Prog, size_fn: SizeFn, get_fn: GetFn) -> Result<String, c_int> {
        let mut n = 0usize;
        // SAFETY: prog is live; n is a valid out-pointer.
        let rc = unsafe { size_fn(prog, &mut n) };
        if rc != 0 {
            return Err(rc);
        }
        let mut buf = vec![0u8; n.max(1)];
        // SAFETY: buf holds the n bytes (including the NUL) NVRTC reported.
        let rc = unsafe { get_fn(prog, buf.as_mut_ptr() as *mut c_char) };
        if rc != 0 {
            return Err(rc);
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Ok(String::from_utf8_lossy(&buf[..end]).trim().to_string())
    }
}
