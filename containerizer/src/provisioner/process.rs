//! What runs in an image container: the task's command merged with the image's defaults
//! (Entrypoint, Cmd, Env, WorkingDir, User). Pure functions.
//!
//! The command follows Docker's `run` rules, which the Mesos docker runtime isolator shares
//! except in one case (noted below):
//!
//! | task command                          | argv                                          |
//! |---------------------------------------|-----------------------------------------------|
//! | shell (`/bin/sh -c value`)            | that; Entrypoint and Cmd ignored              |
//! | a value (`shell=false`, value set)    | the task's argv; Entrypoint and Cmd ignored   |
//! | arguments only (`shell=false`, no value) | Entrypoint + arguments (they replace Cmd)  |
//! | nothing (`shell=false`, no value, no arguments) | Entrypoint + Cmd                    |
//!
//! Mesos keeps `Cmd[0]` and appends the arguments when the image has no Entrypoint; berth
//! replaces the whole Cmd, as `docker run IMAGE ARGS...` does, so `berth run --image busybox
//! -- sh -c '...'` means what it says. Neither Entrypoint nor Cmd nor a task command: the task
//! has no command.
//!
//! The environment is the image's `Env`, then the task's (the task wins, the agent's `MESOS_*`
//! variables among them), then `PATH` and `HOME` defaults for what neither sets. The working
//! directory is the task's, else the image's `WorkingDir`, else `/`.

use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

/// `PATH` of image containers whose image and task set none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a container config's `argv` combines with an image's Entrypoint and Cmd.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgvKind {
    /// `argv` is the whole command (a shell command, or a command with a value): the image's
    /// Entrypoint and Cmd are ignored.
    #[default]
    Command,
    /// `argv` holds only arguments for the image's Entrypoint, replacing its Cmd; empty means
    /// the image's Cmd (a Mesos `CommandInfo` with `shell=false` and no value).
    Arguments,
}

/// The run-time defaults of an image (the `config` object of its OCI image config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, `KEY=VALUE` strings.
    pub env: Vec<String>,
    /// `WorkingDir` (`None` when unset or empty).
    pub working_dir: Option<String>,
    /// `User` (`None` when unset or empty).
    pub user: Option<String>,
}

impl ImageDefaults {
    /// The defaults of an image config.
    pub fn from_config(config: &ImageConfiguration) -> ImageDefaults {
        let Some(c) = config.config() else {
            return ImageDefaults::default();
        };
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        ImageDefaults {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: non_empty(c.working_dir()),
            user: non_empty(c.user()),
        }
    }
}

/// The process of an image container, before its user is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageProcess {
    /// argv.
    pub argv: Vec<String>,
    /// Environment, without `HOME` unless the image or the task set it (it depends on the
    /// user: see [`with_home`]).
    pub env: Vec<(String, String)>,
    /// Working directory inside the container.
    pub cwd: PathBuf,
}

/// Sets `key` to `value` in `env`, replacing an earlier definition in place.
fn set(env: &mut Vec<(String, String)>, key: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => env.push((key.to_string(), value)),
    }
}

/// The argv of an image container (see the module docs); `None` when there is no command.
pub fn image_argv(image: &ImageDefaults, argv: &[String], kind: ArgvKind) -> Option<Vec<String>> {
    let out: Vec<String> = match kind {
        ArgvKind::Command => argv.to_vec(),
        ArgvKind::Arguments => {
            let tail = if argv.is_empty() { &image.cmd } else { argv };
            image.entrypoint.iter().chain(tail).cloned().collect()
        }
    };
    out.first().filter(|a| !a.is_empty())?;
    Some(out)
}

/// Merges the task's command, environment and working directory with the image's defaults
/// (see the module docs); `None` when neither gives a command.
pub fn merge(
    image: &ImageDefaults,
    argv: &[String],
    kind: ArgvKind,
    env: &[(String, String)],
    cwd: Option<&Path>,
) -> Option<ImageProcess> {
    let argv = image_argv(image, argv, kind)?;
    let mut merged = Vec::new();
    for entry in &image.env {
        // Docker skips what is not KEY=VALUE; an empty key cannot be set either.
        if let Some((key, value)) = entry.split_once('=')
            && !key.is_empty()
        {
            set(&mut merged, key, value.to_string());
        }
    }
    for (key, value) in env {
        set(&mut merged, key, value.clone());
    }
    if !merged.iter().any(|(k, _)| k == "PATH") {
        merged.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    let cwd = match (cwd, &image.working_dir) {
        (Some(task), _) => task.to_path_buf(),
        // A relative WorkingDir is taken from the root, as Docker does.
        (None, Some(dir)) => Path::new("/").join(dir),
        (None, None) => PathBuf::from("/"),
    };
    Some(ImageProcess {
        argv,
        env: merged,
        cwd,
    })
}

/// Adds `HOME` (the user's home from the image's `/etc/passwd`, else `/`) unless set.
pub fn with_home(mut env: Vec<(String, String)>, home: Option<&str>) -> Vec<(String, String)> {
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".into(), home.unwrap_or("/").to_string()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageDefaults {
        ImageDefaults {
            entrypoint: strings(entrypoint),
            cmd: strings(cmd),
            ..Default::default()
        }
    }

    #[test]
    fn argv_follows_docker_run() {
        use ArgvKind::{Arguments, Command};
        let none = image(&[], &[]);
        let cmd = image(&[], &["sh", "-c", "echo cmd"]);
        let ep = image(&["/entry", "-v"], &[]);
        let both = image(&["/entry", "-v"], &["default"]);
        let task = strings(&["echo", "hi"]);
        let shell = strings(&["/bin/sh", "-c", "echo hi"]);
        // a shell command or a command with a value: the image's defaults are ignored
        for i in [&none, &cmd, &ep, &both] {
            assert_eq!(image_argv(i, &shell, Command), Some(shell.clone()));
            assert_eq!(image_argv(i, &task, Command), Some(task.clone()));
        }
        // no command at all
        assert_eq!(image_argv(&none, &[], Arguments), None);
        assert_eq!(image_argv(&none, &[], Command), None);
        assert_eq!(image_argv(&cmd, &[], Command), None);
        // image defaults
        assert_eq!(image_argv(&cmd, &[], Arguments), Some(cmd.cmd.clone()));
        assert_eq!(
            image_argv(&ep, &[], Arguments),
            Some(strings(&["/entry", "-v"]))
        );
        assert_eq!(
            image_argv(&both, &[], Arguments),
            Some(strings(&["/entry", "-v", "default"]))
        );
        // arguments replace Cmd, keep Entrypoint
        assert_eq!(image_argv(&cmd, &task, Arguments), Some(task.clone()));
        assert_eq!(
            image_argv(&both, &task, Arguments),
            Some(strings(&["/entry", "-v", "echo", "hi"]))
        );
        assert_eq!(
            image_argv(&none, &task, Arguments),
            Some(task.clone()),
            "arguments alone are the command when the image has neither"
        );
        assert_eq!(image_argv(&none, &strings(&[""]), Arguments), None);
    }

    #[test]
    fn env_task_wins_and_defaults_fill_in() {
        let i = ImageDefaults {
            env: strings(&["PATH=/img/bin", "A=image", "B=image", "junk", "=x", "C=a=b"]),
            cmd: strings(&["run"]),
            ..Default::default()
        };
        let task_env = vec![
            ("B".to_string(), "task".to_string()),
            (
                "MESOS_SANDBOX".to_string(),
                "/mnt/mesos/sandbox".to_string(),
            ),
        ];
        let p = merge(&i, &[], ArgvKind::Arguments, &task_env, None).unwrap();
        assert_eq!(
            p.env,
            vec![
                ("PATH".into(), "/img/bin".into()),
                ("A".into(), "image".into()),
                ("B".into(), "task".into()),
                ("C".into(), "a=b".into()),
                ("MESOS_SANDBOX".into(), "/mnt/mesos/sandbox".into()),
            ]
        );
        let bare = merge(&image(&["x"], &[]), &[], ArgvKind::Arguments, &[], None).unwrap();
        assert_eq!(bare.env, vec![("PATH".into(), DEFAULT_PATH.into())]);
        let homed = with_home(bare.env.clone(), Some("/home/app"));
        assert_eq!(homed[1], ("HOME".into(), "/home/app".into()));
        assert_eq!(with_home(bare.env, None)[1].1, "/");
        let mine = vec![("HOME".to_string(), "/mine".to_string())];
        assert_eq!(with_home(mine.clone(), Some("/root")), mine);
    }

    #[test]
    fn cwd_is_the_task_s_then_the_image_s_then_root() {
        let mut i = image(&["x"], &[]);
        let cwd = |i: &ImageDefaults, task: Option<&str>| {
            merge(i, &[], ArgvKind::Arguments, &[], task.map(Path::new))
                .unwrap()
                .cwd
        };
        assert_eq!(cwd(&i, None), Path::new("/"));
        i.working_dir = Some("/app".into());
        assert_eq!(cwd(&i, None), Path::new("/app"));
        assert_eq!(cwd(&i, Some("/srv")), Path::new("/srv"));
        i.working_dir = Some("rel".into());
        assert_eq!(cwd(&i, None), Path::new("/rel"));
    }

    #[test]
    fn defaults_from_an_oci_config() {
        let config: ImageConfiguration = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux",
                "config":{"Entrypoint":["/e"],"Cmd":["c"],"Env":["A=1"],"WorkingDir":"",
                          "User":"1000:1000"},
                "rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        let d = ImageDefaults::from_config(&config);
        assert_eq!(d.entrypoint, ["/e"]);
        assert_eq!(d.cmd, ["c"]);
        assert_eq!(d.env, ["A=1"]);
        assert_eq!(d.working_dir, None);
        assert_eq!(d.user.as_deref(), Some("1000:1000"));
        let empty: ImageConfiguration = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        assert_eq!(ImageDefaults::from_config(&empty), ImageDefaults::default());
    }
}
