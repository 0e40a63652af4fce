//! iPXE scripts as the boot firmware follows them: `kernel`, `initrd`, `imgargs`, `boot`,
//! `chain`, `echo`, `set`, with `${name}` settings (`net0/mac`, `net0/ip`, `mac`, `ip`, ...;
//! `:hexhyp` for dashed MACs). The script comes from the network: untrusted input.

use std::collections::HashMap;

/// What a script asks for once it reaches `boot` or `chain`. URLs are as written (possibly
/// relative to the script's own URL).
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Boot {
        kernel: String,
        initrds: Vec<String>,
        cmdline: String,
    },
    /// Fetch this and boot it (or run it, if it is a script).
    Chain { url: String, cmdline: String },
}

/// Settings by name, e.g. `net0/mac` → `52:54:00:12:34:56`.
pub type Vars = HashMap<String, String>;

/// Runs the script's commands up to its `boot` or `chain`; `echo` lines go to `echo`.
pub fn interpret(text: &str, vars: &Vars, echo: &mut dyn FnMut(&str)) -> Result<Outcome, String> {
    let mut lines = text.lines();
    if lines.next().map(str::trim_end) != Some("#!ipxe") {
        return Err("not an iPXE script (first line is not #!ipxe)".into());
    }
    let mut vars = vars.clone();
    let mut kernel: Option<(String, String)> = None;
    let mut initrds = Vec::new();
    for (i, raw) in lines.enumerate() {
        let n = i + 2;
        let line = expand(raw.trim(), &vars);
        let mut words = line.split_whitespace();
        let Some(cmd) = words.next() else { continue };
        if cmd.starts_with('#') || cmd.starts_with(':') {
            continue;
        }
        // Image options (--name x, --autofree, -n x ...) do not change what is loaded.
        let mut rest: Vec<&str> = Vec::new();
        let mut skip_value = false;
        for w in words {
            if skip_value {
                skip_value = false;
            } else if rest.is_empty() && w.starts_with('-') {
                skip_value = matches!(w, "-n" | "--name" | "-t" | "--timeout");
            } else {
                rest.push(w);
            }
        }
        let arg = |what: &str| -> Result<(String, String), String> {
            let url = rest
                .first()
                .ok_or_else(|| format!("script line {n}: {cmd} needs {what}"))?;
            Ok((url.to_string(), rest[1..].join(" ")))
        };
        match cmd {
            "kernel" | "imgselect" | "imgload" => kernel = Some(arg("a URL")?),
            "initrd" | "module" | "imgfetch" => initrds.push(arg("a URL")?.0),
            "imgargs" => {
                let k = kernel
                    .as_mut()
                    .ok_or_else(|| format!("script line {n}: imgargs before kernel"))?;
                k.1 = rest[1.min(rest.len())..].join(" ");
            }
            "boot" | "imgexec" if rest.is_empty() => {
                let (kernel, cmdline) =
                    kernel.ok_or_else(|| format!("script line {n}: boot without a kernel"))?;
                return Ok(Outcome::Boot {
                    kernel,
                    initrds,
                    cmdline,
                });
            }
            "chain" | "boot" | "imgexec" => {
                let (url, cmdline) = arg("a URL")?;
                return Ok(Outcome::Chain { url, cmdline });
            }
            "echo" => echo(&rest.join(" ")),
            "set" => {
                let name = rest
                    .first()
                    .ok_or_else(|| format!("script line {n}: set needs a name"))?;
                vars.insert(name.to_string(), rest[1..].join(" "));
            }
            // Already done by the firmware before the script ran.
            "dhcp" | "ifopen" | "ifconf" | "ifstat" | "sleep" => {}
            "exit" => {
                return Err(format!(
                    "script line {n}: the script exits (it means: boot from the local disk); give this client a boot plan with a kernel"
                ))
            }
            other => {
                return Err(format!(
                    "script line {n}: command {other:?} is not supported by the monitor's boot firmware (it follows kernel, initrd, imgargs, boot, chain, echo, set)"
                ))
            }
        }
    }
    Err("the script ended without boot or chain".into())
}

/// Replaces `${name}` and `${name:type}` with settings; unknown settings expand to nothing,
/// as in iPXE.
pub fn expand(s: &str, vars: &Vars) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let Some(end) = rest[i..].find('}') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let spec = &rest[i + 2..i + end];
        let (name, ty) = spec.split_once(':').unwrap_or((spec, ""));
        let v = vars.get(name).cloned().unwrap_or_default();
        out.push_str(&match ty {
            "hexhyp" => v.replace(':', "-"),
            "hexraw" => v.replace(':', ""),
            _ => v,
        });
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        [("net0/mac", "52:54:00:00:00:01"), ("net0/ip", "10.0.0.5")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn kernel_initrd_boot() {
        let s = "#!ipxe\necho hi ${net0/mac}\n# c\n:start\ndhcp\nkernel --name k http://10.0.0.1/k m=${net0/mac:hexhyp} ip=${net0/ip}\ninitrd i1\ninitrd --name x tftp://10.0.0.2/i2\nboot\n";
        let mut echoed = Vec::new();
        let o = interpret(s, &vars(), &mut |l| echoed.push(l.to_string())).unwrap();
        assert_eq!(echoed, ["hi 52:54:00:00:00:01"]);
        assert_eq!(
            o,
            Outcome::Boot {
                kernel: "http://10.0.0.1/k".into(),
                initrds: vec!["i1".into(), "tftp://10.0.0.2/i2".into()],
                cmdline: "m=52-54-00-00-00-01 ip=10.0.0.5".into()
            }
        );
        let s = "#!ipxe\nset f k.elf\nkernel ${f} a\nimgargs k.elf b c\nboot\n";
        assert!(matches!(interpret(s, &vars(), &mut |_| {}).unwrap(),
            Outcome::Boot { kernel, cmdline, .. } if kernel == "k.elf" && cmdline == "b c"));
        let s = "#!ipxe\nchain http://10.0.0.1/next.ipxe x=1\n";
        assert_eq!(
            interpret(s, &vars(), &mut |_| {}).unwrap(),
            Outcome::Chain {
                url: "http://10.0.0.1/next.ipxe".into(),
                cmdline: "x=1".into()
            }
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = |s| interpret(s, &vars(), &mut |_| {}).unwrap_err();
        assert!(e("echo x").contains("not an iPXE script"));
        assert!(e("#!ipxe\nboot\n").contains("line 2: boot without a kernel"));
        assert!(e("#!ipxe\nsanboot iscsi:x\n").contains("line 2: command \"sanboot\""));
        assert!(e("#!ipxe\nexit\n").contains("local disk"));
        assert!(e("#!ipxe\nkernel k\n").contains("without boot"));
        assert!(e("#!ipxe\nkernel\n").contains("needs a URL"));
        assert_eq!(expand("a${x", &vars()), "a${x");
        assert_eq!(expand("${nope}b", &vars()), "b");
    }

    #[test]
    fn random_scripts_never_panic() {
        let mut rng = crate::netboot::tests::Rng(5);
        let seed =
            b"#!ipxe\nset a ${net0/mac:hexhyp}\nkernel -n k ${a} x\nimgargs k y\ninitrd i\nboot\n";
        let alphabet = b"${}:-# \nabkx/";
        for _ in 0..30_000 {
            let p = rng.mutate(seed, Some(alphabet));
            let _ = interpret(&String::from_utf8_lossy(&p), &vars(), &mut |_| {});
        }
    }
}
