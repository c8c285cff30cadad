//! `berth image load|pull|ls|rm|gc`: the image store under `<work-dir>/images`, used directly
//! (no agent needs to run; the store's own locks make it safe beside a running agent).

use std::{collections::HashMap, io::IsTerminal, path::PathBuf, sync::Mutex, time::Duration};

use anyhow::Context;
use berth_containerizer::image::{ImageInfo, ImageStore, PullOptions, PullProgress, Sha256};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Arguments of `berth image`.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Directory for checkpoints, sandboxes and images (the store is `<work-dir>/images`).
    #[arg(long, global = true, default_value = "/var/lib/berth")]
    pub work_dir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// The image verbs.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Load images from an OCI layout directory, an OCI archive or a docker-archive tarball.
    Load(LoadArgs),
    /// Pull an image from a registry (linux/amd64 of multi-platform images).
    Pull(PullArgs),
    /// List the images of the store.
    Ls(LsArgs),
    /// Remove image names (their blobs stay until `berth image gc`).
    Rm(RmArgs),
    /// Delete blobs and unpacked layers that no image needs.
    Gc(LsArgs),
}

/// Arguments of `berth image load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Repository for images named only by a tag (default `localhost/<file name>`).
    #[arg(long)]
    pub name: Option<String>,
    /// The OCI layout directory, OCI archive or docker-archive.
    pub path: PathBuf,
}

/// Arguments of `berth image pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Allow plain HTTP to a registry that is not on loopback.
    #[arg(long)]
    pub insecure: bool,
    /// Do not unpack the layers now (they are unpacked on first use).
    #[arg(long)]
    pub no_unpack: bool,
    /// Layers downloaded at once.
    #[arg(long, default_value = "3", value_parser = clap::value_parser!(u16).range(1..=32))]
    pub concurrency: u16,
    /// Image reference (`busybox`, `registry:5000/team/app:tag`, `…@sha256:…`).
    pub reference: String,
}

/// Arguments of `berth image ls` and `berth image gc`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `berth image rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Image references or manifest digests.
    #[arg(required = true)]
    pub references: Vec<String>,
}

/// Runs `berth image …`; returns the exit code.
pub async fn run(args: ImageArgs) -> anyhow::Result<i32> {
    // warnings of the store (skipped xattrs, unreadable images) on stderr; RUST_LOG overrides
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let root = args.work_dir.join("images");
    let store = ImageStore::open(&root)
        .with_context(|| format!("opening the image store {}", root.display()))?;
    match args.command {
        ImageCommand::Load(load) => {
            let loaded = blocking(move || store.load_as(&load.path, load.name.as_deref())).await?;
            for image in loaded {
                println!("Loaded {} ({})", image.reference, image.digest);
            }
        }
        ImageCommand::Pull(pull) => {
            let options = PullOptions {
                insecure: pull.insecure,
                concurrency: usize::from(pull.concurrency),
            };
            let progress = Progress::new();
            let image = store.pull_with(&pull.reference, &options, &progress).await;
            progress.finish();
            let image = image?;
            if !pull.no_unpack {
                let name = image.reference.clone();
                let layers = blocking(move || store.rootfs_layers(&name)).await?;
                eprintln!("unpacked {} layers", layers.len());
            }
            println!("Pulled {} ({})", image.reference, image.digest);
        }
        ImageCommand::Ls(ls) => {
            let images = blocking(move || store.list()).await?;
            if ls.json {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else {
                print_table(&images);
            }
        }
        ImageCommand::Rm(rm) => {
            for reference in rm.references {
                let store = store.clone();
                let removed = blocking(move || store.remove(&reference)).await?;
                for name in removed {
                    println!("Removed {name}");
                }
            }
        }
        ImageCommand::Gc(gc) => {
            let report = blocking(move || store.gc()).await?;
            if gc.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "Removed {} blobs and {} unpacked layers, freed {}",
                    report.blobs_removed,
                    report.layers_removed,
                    human(report.bytes_freed)
                );
            }
        }
    }
    Ok(0)
}

async fn blocking<T: Send + 'static, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    Ok(tokio::task::spawn_blocking(f).await??)
}

fn print_table(images: &[ImageInfo]) {
    let width = images
        .iter()
        .map(|i| i.reference.len())
        .max()
        .unwrap_or(0)
        .max(9);
    println!(
        "{:width$}  {:19}  {:>9}  {:>6}  SOURCE",
        "REFERENCE", "DIGEST", "SIZE", "LAYERS"
    );
    for image in images {
        println!(
            "{:width$}  sha256:{}  {:>9}  {:>6}  {}",
            image.reference,
            image.digest.short(),
            human(image.size),
            image.layers.len(),
            image.source
        );
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Pull progress: a bar per blob on a terminal, plain lines otherwise (both on stderr).
struct Progress {
    bars: Option<MultiProgress>,
    blobs: Mutex<HashMap<Sha256, ProgressBar>>,
}

impl Progress {
    fn new() -> Self {
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self {
            bars,
            blobs: Mutex::new(HashMap::new()),
        }
    }

    fn finish(&self) {
        let blobs = self.blobs.lock().unwrap_or_else(|e| e.into_inner());
        for bar in blobs.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }

    fn with_bar(&self, digest: &Sha256, f: impl FnOnce(&ProgressBar)) {
        if let Some(bar) = self
            .blobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
        {
            f(bar);
        }
    }
}

impl PullProgress for Progress {
    fn resolved(&self, reference: &str, digest: &Sha256, blobs: &[(Sha256, u64)]) {
        let total: u64 = blobs.iter().map(|(_, size)| size).sum();
        eprintln!(
            "{reference}: manifest {digest}, {} blobs, {}",
            blobs.len(),
            human(total)
        );
    }

    fn layer_started(&self, digest: &Sha256, size: u64, offset: u64) {
        match &self.bars {
            Some(bars) => {
                let bar = bars.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(digest.short().to_string());
                bar.set_position(offset);
                bar.enable_steady_tick(Duration::from_millis(200));
                self.blobs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(digest.clone(), bar);
            }
            None if offset >= size => {}
            None if offset > 0 => {
                eprintln!(
                    "{}: resuming at {} of {}",
                    digest.short(),
                    human(offset),
                    human(size)
                );
            }
            None => eprintln!("{}: downloading {}", digest.short(), human(size)),
        }
    }

    fn layer_progress(&self, digest: &Sha256, bytes: u64) {
        self.with_bar(digest, |bar| bar.inc(bytes));
    }

    fn layer_done(&self, digest: &Sha256, cached: bool) {
        let message = if cached { "already present" } else { "done" };
        if self.bars.is_some() {
            self.with_bar(digest, |bar| bar.finish_with_message(message));
        } else {
            eprintln!("{}: {message}", digest.short());
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn parses_image_verbs() {
        let cli = Cli::try_parse_from(["berth", "image", "pull", "--insecure", "busybox"]).unwrap();
        let Command::Image(args) = cli.command else {
            panic!("not image")
        };
        assert_eq!(args.work_dir, PathBuf::from("/var/lib/berth"));
        match args.command {
            ImageCommand::Pull(pull) => {
                assert!(pull.insecure && !pull.no_unpack);
                assert_eq!(pull.reference, "busybox");
                assert_eq!(pull.concurrency, 3);
            }
            other => panic!("{other:?}"),
        }
        let cli =
            Cli::try_parse_from(["berth", "image", "ls", "--work-dir", "/w", "--json"]).unwrap();
        let Command::Image(args) = cli.command else {
            panic!("not image")
        };
        assert_eq!(args.work_dir, PathBuf::from("/w"));
        assert!(matches!(
            args.command,
            ImageCommand::Ls(LsArgs { json: true })
        ));
        assert!(Cli::try_parse_from(["berth", "image", "rm"]).is_err());
        assert!(Cli::try_parse_from(["berth", "image", "load"]).is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
