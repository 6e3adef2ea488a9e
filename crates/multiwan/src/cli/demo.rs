//! `multiwan demo`: a sandbox of network namespaces with three uplinks (fibre, cable,
//! LTE backup), an internet with a server that says which address it saw, and a LAN
//! client. It applies a few configs and shows where LAN connections go for each, then
//! removes everything, also on Ctrl-C.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use netns_lab::{tcp_whoami, Lab};

use super::CliResult;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM only set a flag: the demo stops at the next step and the lab's
/// guards tear everything down on the way out.
fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

fn step() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; the sandbox is being removed");
    }
    Ok(())
}

const PORT: u16 = 8080;
const LINKS: [(&str, usize); 3] = [("fibre", 1), ("cable", 2), ("lte", 3)];

pub fn run() -> CliResult {
    install_signal_handlers();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(anyhow::anyhow!(
            "the demo builds network namespaces: run it as root (sudo multiwan demo)"
        )
        .into());
    }
    let demo = Demo::new()?;
    let result = demo.tour();
    // `demo` drops here: namespaces, processes and files go, whatever happened.
    drop(demo);
    println!("\nsandbox removed: no namespace, rule or table of the demo is left.");
    result.map(|_| 0).map_err(Into::into)
}

struct Demo {
    lab: Lab,
    config: PathBuf,
    nft_table: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_dir_all(format!("/var/lib/multiwan/{}", self.nft_table));
        let _ = std::fs::remove_file(format!("/etc/iproute2/rt_tables.d/{}.conf", self.nft_table));
    }
}

impl Demo {
    fn new() -> Result<Demo> {
        println!("multiwan demo: building a sandbox of network namespaces");
        println!("  router (wan1 fibre, wan2 cable, wan3 lte, lan0) — three ISPs — internet — a LAN client");
        let lab = Lab::builder("demo")
            .prefix("mwdemo")
            .build()
            .context("building the sandbox")?;
        let nft_table = format!("mwdemo{}", std::process::id());
        let config = std::env::temp_dir().join(format!("{nft_table}.toml"));
        Ok(Demo {
            lab,
            config,
            nft_table,
        })
    }

    fn write_config(&self, links: &str) -> Result<()> {
        let text = format!(
            "[settings]\nnft_table = \"{}\"\nlan = [\"lan0\"]\n\n{links}",
            self.nft_table
        );
        std::fs::write(&self.config, text)?;
        Ok(())
    }

    fn multiwan(&self, args: &[&str]) -> Result<String> {
        let exe = std::env::current_exe().context("finding the multiwan binary")?;
        let out = self
            .lab
            .router()
            .command(exe)
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .output()?;
        if !out.status.success() {
            bail!(
                "multiwan {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Opens `n` connections from the LAN client and counts where they left.
    fn sample(&self, n: usize) -> Result<[usize; 4]> {
        let server = IpAddr::V4(self.lab.server(1));
        let mut per = [0usize; 4];
        for _ in 0..n {
            step()?;
            match tcp_whoami(self.lab.lan(), server, PORT, None, Duration::from_secs(2)) {
                Ok(seen) => per[self.lab.isp_of(seen).unwrap_or(0)] += 1,
                Err(_) => per[0] += 1,
            }
        }
        Ok(per)
    }

    fn show(&self, title: &str, per: [usize; 4]) {
        let total: usize = per.iter().sum();
        println!("  {title}");
        for (name, k) in LINKS {
            let bar = "#".repeat(per[k] * 40 / total.max(1));
            println!("    {name:<6} {:>4} {bar}", per[k]);
        }
        if per[0] > 0 {
            println!("    failed {:>4}", per[0]);
        }
    }

    fn tour(&self) -> Result<()> {
        let _server = self.lab.whoami_tcp(PORT)?;
        let links = |fibre: &str, cable: &str, lte: &str| {
            format!(
                "[links.fibre]\nid = 1\ninterface = \"wan1\"\n{fibre}\n\n\
                 [links.cable]\nid = 2\ninterface = \"wan2\"\n{cable}\n\n\
                 [links.lte]\nid = 3\ninterface = \"wan3\"\n{lte}\n"
            )
        };

        println!("\n1. Fibre and cable share the load 3:1, LTE is the backup (priority 2).");
        self.write_config(&links("weight = 3", "weight = 1", "priority = 2"))?;
        self.multiwan(&["apply"])?;
        self.show("100 new connections from the LAN:", self.sample(100)?);

        println!("\n2. Equal weights: an even split.");
        self.write_config(&links("", "", "priority = 2"))?;
        self.multiwan(&["apply"])?;
        self.show("100 new connections from the LAN:", self.sample(100)?);

        println!("\n3. The fibre's carrier is cut; `apply` sees no carrier and takes it out.");
        self.lab.carrier(1, false)?;
        self.multiwan(&["apply"])?;
        self.show("50 new connections from the LAN:", self.sample(50)?);

        println!("\n4. Cable gone too: the LTE backup carries everything.");
        self.lab.carrier(2, false)?;
        self.multiwan(&["apply"])?;
        self.show("50 new connections from the LAN:", self.sample(50)?);

        println!("\n5. Both heal: back to the first tier.");
        self.lab.carrier(1, true)?;
        self.lab.carrier(2, true)?;
        self.multiwan(&["apply"])?;
        self.show("50 new connections from the LAN:", self.sample(50)?);

        println!("\nWhat multiwan installed (multiwan plan shows the same as a script):");
        let plan = self.multiwan(&["plan"])?;
        for line in plan.lines().take_while(|l| !l.starts_with("# sysctls")) {
            println!("  {line}");
        }
        self.multiwan(&["flush"])?;
        println!("\nmultiwan flush removed every rule, route and nft table it had installed.");
        Ok(())
    }
}
