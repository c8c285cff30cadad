//! Image containers through the agent: `berth run --image REF` and the scheduler API's
//! `ContainerInfo{type: MESOS, mesos.image: DOCKER|APPC}`. The images are OCI layouts written
//! here from busybox-static and loaded with `berth image load` into the agent's store, so no
//! test but the pull on demand (from a real local `docker-registry`) needs a registry. The tests
//! named `cgroup_image_*` also run in the cgroup v2 microVM (root, defaults and user, the
//! scheduler API with a failing pull and a missing command); the others exercise overlay and
//! store behaviour that does not depend on the cgroup version, and run on the host only (under
//! TCG every image test costs minutes of the VM's budget).
//!
//! What is checked: the container sees the image's root and nothing of the host's; the image's
//! Entrypoint, Cmd, Env, WorkingDir and User are honoured and the task overrides them as
//! `docker run` does; writes land in the upper dir in the sandbox and leave the unpacked layers
//! untouched; an unknown image fails the task with a message naming it and leaves nothing
//! behind; an image without a command is a TASK_ERROR; `berth image rm` + `gc` cannot remove
//! the layers of a running container, and do once it is gone.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
    time::Duration,
};

use berth_proto::{codec::ContentType, mesos::v1 as mesos};
use berth_tests::{
    Agent, Output,
    framework::{Framework, is_terminal, launch},
    images::{
        LayerBuilder, Registry, TestImage, berth_image, files_in, free_port, image_with_config,
        sha256, skopeo_push, temp_dir,
    },
    scaled, wait_until,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// the test images
// ---------------------------------------------------------------------------------------------

const OS_RELEASE: &str = "NAME=\"berth test image\"\nID=berth-test\n";
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\napp:x:1001:\nwheel:x:10:app\n";

/// One layer: busybox with a few applets, an os-release, users and groups, /work owned by
/// 1000:1000, /home/app, /tmp.
fn base_layer() -> Vec<u8> {
    LayerBuilder::new()
        .busybox(&[
            "sh", "ls", "cat", "true", "id", "env", "sleep", "wc", "hostname",
        ])
        .file("etc/os-release", OS_RELEASE.as_bytes(), 0o644)
        .file("etc/passwd", PASSWD.as_bytes(), 0o644)
        .file("etc/group", GROUP.as_bytes(), 0o644)
        .dir("work", 0o755, 1000, 1000)
        .dir("home", 0o755, 0, 0)
        .dir("home/app", 0o755, 1000, 1001)
        .dir("tmp", 0o1777, 0, 0)
        .finish()
}

/// The images, by name (without the `:1.0` tag every one gets).
fn images() -> BTreeMap<&'static str, TestImage> {
    let base = base_layer();
    // a second layer, so the overlay has more than one lower dir
    let top = LayerBuilder::new()
        .dir("etc", 0o755, 0, 0)
        .file("etc/motd", b"from the top layer\n", 0o644)
        .finish();
    let layers = [base, top];
    let env = json!(["PATH=/bin", "GREETING=hello-from-image"]);
    BTreeMap::from([
        (
            "berth.test/busybox",
            image_with_config(
                &layers,
                json!({"Cmd": ["sh", "-c", "echo default-cmd"], "Env": env, "WorkingDir": "/"}),
            ),
        ),
        (
            "berth.test/app",
            image_with_config(
                &layers,
                json!({
                    "Entrypoint": ["/bin/sh", "-c"],
                    "Cmd": ["echo cmd:$(id -u):$(id -g):$(pwd):$HOME:$GREETING"],
                    "Env": env, "WorkingDir": "/work", "User": "1000:1000",
                }),
            ),
        ),
        (
            "berth.test/named",
            image_with_config(&layers, json!({"Env": env, "User": "app"})),
        ),
        (
            "berth.test/nocmd",
            image_with_config(&layers, json!({"Env": env})),
        ),
    ])
}

/// Writes every test image as an OCI layout and loads it into the agent's store.
fn load_images(agent: &Agent) -> BTreeMap<&'static str, TestImage> {
    let images = images();
    let dir = temp_dir("layouts");
    for (name, image) in &images {
        let layout = dir.path().join(name.replace('/', "_"));
        image.write_layout(&layout, "1.0");
        let out = berth_image(
            agent.work_dir(),
            &["load", "--name", name, layout.to_str().unwrap()],
        );
        out.assert_success();
    }
    images
}

/// A digest of everything in a directory tree (names, types, modes, owners, link targets,
/// contents), to show that a layer was not modified.
fn tree_digest(dir: &Path) -> String {
    fn walk(dir: &Path, rel: &Path, out: &mut Vec<u8>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        entries.sort();
        for name in entries {
            let path = dir.join(&name);
            let rel = rel.join(&name);
            let meta = fs::symlink_metadata(&path).unwrap();
            out.extend(
                format!(
                    "{} {:o} {}:{} {}\n",
                    rel.display(),
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    meta.len()
                )
                .as_bytes(),
            );
            if meta.file_type().is_symlink() {
                out.extend(fs::read_link(&path).unwrap().as_os_str().as_encoded_bytes());
            } else if meta.is_file() {
                out.extend(fs::read(&path).unwrap());
            } else if meta.is_dir() {
                walk(&path, &rel, out);
            }
        }
    }
    let mut data = Vec::new();
    walk(dir, Path::new(""), &mut data);
    sha256(&data)
}

fn layer_dirs(agent: &Agent, image: &TestImage) -> Vec<PathBuf> {
    (0..image.diff_ids.len())
        .map(|i| image.layer_dir(agent.work_dir(), i))
        .collect()
}

#[track_caller]
fn assert_stdout(out: &Output, wanted: &str) {
    assert!(
        out.stdout.contains(wanted),
        "stdout lacks {wanted:?}:\n{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// berth run --image
// ---------------------------------------------------------------------------------------------

#[test]
fn cgroup_image_run_sees_the_image_root_only() {
    let Some(mut agent) = Agent::start_or_skip() else {
        return;
    };
    load_images(&agent);
    let out = agent.berth(&[
        "run",
        "--image",
        "berth.test/busybox:1.0",
        "--",
        "sh",
        "-c",
        "cat /etc/os-release /etc/motd; echo root:$(ls /); ls /usr 2>&1; \
         echo sandbox:$MESOS_SANDBOX:$(ls -A /mnt/mesos/sandbox/.rootfs | wc -l); \
         echo host:$(cat /etc/hostname):$(hostname); cat /etc/hosts; echo hi; exit 7",
    ]);
    out.assert_code(7);
    assert_stdout(&out, "NAME=\"berth test image\"");
    assert_stdout(&out, "from the top layer");
    let root_line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("root:"))
        .unwrap_or_default();
    let root: Vec<&str> = root_line["root:".len()..].split_whitespace().collect();
    for wanted in ["bin", "etc", "work", "proc", "dev", "sys", "mnt"] {
        assert!(root.contains(&wanted), "/ lacks {wanted}: {root:?}\n{out}");
    }
    for host_only in ["usr", "lib", "var", "boot"] {
        assert!(
            !root.contains(&host_only),
            "host's /{host_only} visible: {root:?}"
        );
    }
    assert_stdout(&out, "ls: /usr: No such file or directory");
    // the overlay's upper/work dirs are hidden from the workload
    assert_stdout(&out, "sandbox:/mnt/mesos/sandbox:0\n");
    let host_line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("host:"))
        .unwrap_or_default();
    let names: Vec<&str> = host_line.split(':').collect();
    assert_eq!(names.len(), 3, "{out}");
    assert_eq!(
        names[1], names[2],
        "/etc/hostname is the container's name: {out}"
    );
    assert_stdout(&out, &format!("127.0.1.1\t{}\n", names[1]));
    assert_stdout(&out, "hi\n");
    // the image's default Cmd when no command is given
    let out = agent.berth(&["run", "--image", "berth.test/busybox:1.0"]);
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), "default-cmd", "{out}");
    agent.assert_no_leftovers();
}

#[test]
fn cgroup_image_defaults_env_workdir_and_user() {
    let Some(mut agent) = Agent::start_or_skip() else {
        return;
    };
    load_images(&agent);
    // Entrypoint + Cmd, Env, WorkingDir, User 1000:1000 (HOME from the image's passwd)
    let out = agent.berth(&["run", "--image", "berth.test/app:1.0"]);
    out.assert_code(0);
    assert_eq!(
        out.stdout.trim(),
        "cmd:1000:1000:/work:/home/app:hello-from-image",
        "{out}"
    );
    // arguments replace Cmd and keep the Entrypoint; the task's env wins over the image's
    let out = agent.berth(&[
        "run",
        "--image",
        "berth.test/app:1.0",
        "-e",
        "GREETING=from-task",
        "--",
        "echo args:$GREETING:$(id -u):$(pwd)",
    ]);
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), "args:from-task:1000:/work", "{out}");
    // the task's working directory wins over WorkingDir
    let out = agent.berth(&[
        "run",
        "--image",
        "berth.test/app:1.0",
        "-w",
        "/tmp",
        "--",
        "pwd",
    ]);
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), "/tmp", "{out}");
    // a user by name: uid, primary group and supplementary groups from the image's files
    let out = agent.berth(&[
        "run",
        "--image",
        "berth.test/named:1.0",
        "--",
        "sh",
        "-c",
        "echo $(id -u) $(id -g) $(id -G) $HOME",
    ]);
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), "1000 1001 1001 10 /home/app", "{out}");
    // root without a User: HOME from the image's passwd, PATH from its Env
    let out = agent.berth(&[
        "run",
        "--image",
        "berth.test/busybox:1.0",
        "--",
        "sh",
        "-c",
        "echo $(id -u) $HOME $PATH",
    ]);
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), "0 /root /bin", "{out}");
    // neither Entrypoint, Cmd nor a command: TASK_ERROR naming the image
    let out = agent.berth(&["run", "--name", "nocmd", "--image", "berth.test/nocmd:1.0"]);
    out.assert_code(125);
    assert!(
        out.stderr.contains("no command") && out.stderr.contains("berth.test/nocmd:1.0"),
        "{out}"
    );
    assert_eq!(agent.task_state("nocmd"), "TASK_ERROR");
    agent.assert_no_leftovers();
}

#[test]
fn image_writes_land_in_the_sandbox_and_layers_stay_untouched() {
    let Some(mut agent) = Agent::start_or_skip() else {
        return;
    };
    let images = load_images(&agent);
    let image = &images["berth.test/busybox"];
    // unpacked on first use: run once, then take the layers' digests
    agent
        .berth(&["run", "--image", "berth.test/busybox:1.0", "--", "true"])
        .assert_code(0);
    let layers = layer_dirs(&agent, image);
    let before: Vec<String> = layers.iter().map(|l| tree_digest(l)).collect();
    let out = agent.berth(&[
        "run",
        "--name",
        "writer",
        "--image",
        "berth.test/busybox:1.0",
        "--",
        "sh",
        "-c",
        "echo data > /newfile && echo changed > /etc/os-release && rm /bin/true && \
         mkdir -p /work/sub && echo deep > /work/sub/file && cat /etc/os-release",
    ]);
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), "changed", "{out}");
    let after: Vec<String> = layers.iter().map(|l| tree_digest(l)).collect();
    assert_eq!(before, after, "the image's layers were modified");
    let sandbox = PathBuf::from(
        agent.inspect("writer")["container"]["sandbox"]
            .as_str()
            .unwrap(),
    );
    let upper = sandbox.join(".rootfs/upper");
    assert_eq!(fs::read_to_string(upper.join("newfile")).unwrap(), "data\n");
    assert_eq!(
        fs::read_to_string(upper.join("etc/os-release")).unwrap(),
        "changed\n"
    );
    assert_eq!(
        fs::read_to_string(upper.join("work/sub/file")).unwrap(),
        "deep\n"
    );
    let whiteout = fs::symlink_metadata(upper.join("bin/true")).unwrap();
    assert!(
        whiteout.file_type().is_char_device() && whiteout.rdev() == 0,
        "rm /bin/true left no whiteout in the upper dir"
    );
    // the next container starts from the image again
    let out = agent.berth(&[
        "run",
        "--image",
        "berth.test/busybox:1.0",
        "--",
        "sh",
        "-c",
        "cat /etc/os-release; ls /newfile 2>&1; true && echo has-true",
    ]);
    out.assert_code(0);
    assert_stdout(&out, OS_RELEASE);
    assert_stdout(&out, "No such file or directory");
    assert_stdout(&out, "has-true");
    agent.assert_no_leftovers();
}

#[test]
fn image_unknown_image_fails_the_task_naming_it() {
    let Some(mut agent) = Agent::start_or_skip() else {
        return;
    };
    // nothing listens there: the pull fails at once, without leaving the machine
    let reference = format!("127.0.0.1:{}/berth/nope:1", free_port());
    let out = agent.berth(&[
        "run", "--name", "ghost", "--image", &reference, "--", "true",
    ]);
    out.assert_code(125);
    assert!(
        out.stderr.contains(&reference) && out.stderr.contains("pulling image"),
        "{out}"
    );
    let inspect = agent.inspect("ghost");
    assert_eq!(inspect["task"]["state"], "TASK_FAILED", "{inspect:#}");
    let last = berth_tests::last_status(&inspect);
    assert_eq!(last["reason"], "REASON_CONTAINER_LAUNCH_FAILED", "{last:#}");
    assert!(
        files_in(&agent.work_dir().join("images/leases")).is_empty(),
        "a lease was left behind"
    );
    agent.assert_no_leftovers();
}

#[test]
fn image_rm_and_gc_keep_the_layers_of_a_running_container() {
    let Some(mut agent) = Agent::start_or_skip() else {
        return;
    };
    let images = load_images(&agent);
    let image = &images["berth.test/busybox"];
    let id = agent.run_detached(&["--image", "berth.test/busybox:1.0", "--", "sleep", "600"]);
    agent.wait_for_state(&id, &["TASK_RUNNING"], Duration::from_secs(60));
    let work = agent.work_dir().to_path_buf();
    for name in images.keys() {
        berth_image(&work, &["rm", &format!("{name}:1.0")]).assert_success();
    }
    let out = berth_image(&work, &["gc", "--json"]);
    out.assert_success();
    assert_eq!(out.json()["layers_removed"], 0, "{out}");
    let layers = layer_dirs(&agent, image);
    assert!(layers.iter().all(|l| l.is_dir()), "gc removed a used layer");
    // still running, and its root still works
    assert_eq!(agent.task_state(&id), "TASK_RUNNING");

    agent.berth(&["kill", "--grace", "0", &id]).assert_success();
    agent.wait_for_state(&id, &["TASK_KILLED"], Duration::from_secs(30));
    // the lease goes when the container is destroyed (right after the terminal update)
    wait_until(
        "the lease released",
        scaled(Duration::from_secs(20)),
        || {
            files_in(&work.join("images/leases"))
                .is_empty()
                .then_some(())
        },
    );
    let out = berth_image(&work, &["gc", "--json"]);
    out.assert_success();
    assert_eq!(out.json()["layers_removed"], 2, "{out}");
    assert!(layers.iter().all(|l| !l.exists()));
    assert!(files_in(&work.join("images/blobs/sha256")).is_empty());
    agent.assert_no_leftovers();
}

#[test]
fn image_restart_keeps_the_lease_of_a_running_container_and_drops_stale_ones() {
    let Some(mut agent) = Agent::start_or_skip() else {
        return;
    };
    let images = load_images(&agent);
    let image = &images["berth.test/busybox"];
    let id = agent.run_detached(&[
        "--image",
        "berth.test/busybox:1.0",
        "--",
        "sh",
        "-c",
        "while :; do cat /etc/motd; sleep 0.2; done",
    ]);
    let container = agent.inspect(&id)["container"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let leases = agent.work_dir().join("images/leases");
    assert_eq!(files_in(&leases), std::slice::from_ref(&container));
    // a lease whose container is gone (an agent killed between lease and launch)
    fs::write(leases.join("stale-container"), &image.manifest).unwrap();
    agent.crash_and_restart();
    assert_eq!(agent.task_state(&id), "TASK_RUNNING");
    assert_eq!(
        files_in(&leases),
        [container],
        "recovery keeps the running container's lease and drops the stale one"
    );
    let logs = agent.berth(&["logs", &id]);
    assert_stdout(&logs, "from the top layer");
    agent.berth(&["kill", "--grace", "0", &id]).assert_success();
    agent.wait_for_state(&id, &["TASK_KILLED"], Duration::from_secs(30));
    wait_until(
        "the lease released",
        scaled(Duration::from_secs(20)),
        || files_in(&leases).is_empty().then_some(()),
    );
    agent.assert_no_leftovers();
}

/// Host only (the microVM has no registry running): the agent pulls the image on demand.
#[test]
fn image_run_pulls_on_demand_from_a_local_registry() {
    let Some(mut agent) = Agent::start_or_skip() else {
        return;
    };
    let image = &images()["berth.test/app"];
    let layouts = temp_dir("layout");
    let layout = layouts.path().join("app");
    image.write_layout(&layout, "1.0");
    let registry = Registry::start();
    let reference = format!("127.0.0.1:{}/berth/app:1.0", registry.port);
    skopeo_push(&layout, "1.0", &reference);
    let out = agent.berth(&["run", "--image", &reference]);
    out.assert_code(0);
    assert_eq!(
        out.stdout.trim(),
        "cmd:1000:1000:/work:/home/app:hello-from-image",
        "{out}"
    );
    let listed = berth_image(agent.work_dir(), &["ls", "--json"]);
    listed.assert_success();
    let listed: Value = listed.json();
    assert_eq!(listed[0]["reference"], reference.as_str(), "{listed}");
    assert_eq!(listed[0]["source"], "pull", "{listed}");
    assert_eq!(listed[0]["digest"], image.manifest.as_str(), "{listed}");
    // present now: a second run does not pull again (the registry is gone)
    drop(registry);
    let out = agent.berth(&["run", "--image", &reference, "--", "echo again"]);
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), "again", "{out}");
    agent.assert_no_leftovers();
}

// ---------------------------------------------------------------------------------------------
// the scheduler API
// ---------------------------------------------------------------------------------------------

/// Launches `tasks` on `fw`'s next offer and returns the terminal status of each, by task id,
/// acknowledging every update.
async fn run_tasks(
    fw: &mut Framework,
    mut tasks: Vec<mesos::TaskInfo>,
) -> BTreeMap<String, mesos::TaskStatus> {
    let offer = fw.offer().await;
    for task in &mut tasks {
        task.agent_id = offer.agent_id.clone();
    }
    let ids: Vec<String> = tasks.iter().map(|t| t.task_id.value.clone()).collect();
    fw.send(launch(&offer, tasks)).await;
    let mut done = BTreeMap::new();
    for id in ids {
        loop {
            let status = fw.update_of(&id).await;
            if is_terminal(status.state()) {
                done.insert(id.clone(), status);
                break;
            }
        }
    }
    done
}

fn image_task(
    id: &str,
    image: mesos::Image,
    command: Option<mesos::CommandInfo>,
) -> mesos::TaskInfo {
    let mut container = mesos::ContainerInfo {
        mesos: Some(mesos::container_info::MesosInfo { image: Some(image) }),
        ..Default::default()
    };
    container.set_type(mesos::container_info::Type::Mesos);
    mesos::TaskInfo {
        name: id.into(),
        task_id: mesos::TaskId { value: id.into() },
        resources: vec![
            berth_proto::resources::scalar("cpus", 0.1),
            berth_proto::resources::scalar("mem", 32.0),
        ],
        command,
        container: Some(container),
        ..Default::default()
    }
}

fn docker_image(name: &str) -> mesos::Image {
    let mut image = mesos::Image {
        docker: Some(mesos::image::Docker { name: name.into() }),
        ..Default::default()
    };
    image.set_type(mesos::image::Type::Docker);
    image
}

fn appc_image(name: &str) -> mesos::Image {
    let mut image = mesos::Image {
        appc: Some(mesos::image::Appc {
            name: name.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    image.set_type(mesos::image::Type::Appc);
    image
}

#[test]
fn cgroup_image_scheduler_api_launches_image_tasks() {
    let Some(mut agent) = Agent::start_or_skip() else {
        return;
    };
    load_images(&agent);
    let unknown = format!("127.0.0.1:{}/berth/nope:1", free_port());
    let tasks = vec![
        // a DOCKER image with a shell command
        image_task(
            "docker-shell",
            docker_image("berth.test/busybox:1.0"),
            Some(mesos::CommandInfo {
                value: Some("cat /etc/os-release; echo sandbox=$MESOS_SANDBOX".into()),
                ..Default::default()
            }),
        ),
        // an APPC name taken as a plain reference; shell=false without a value: Entrypoint + Cmd
        image_task(
            "appc-defaults",
            appc_image("berth.test/app:1.0"),
            Some(mesos::CommandInfo {
                shell: Some(false),
                ..Default::default()
            }),
        ),
        // no CommandInfo at all and an image without a command: TASK_ERROR
        image_task("no-command", docker_image("berth.test/nocmd:1.0"), None),
        // an image nobody has: TASK_FAILED naming it
        image_task(
            "unknown",
            docker_image(&unknown),
            Some(mesos::CommandInfo {
                value: Some("true".into()),
                ..Default::default()
            }),
        ),
    ];
    let done = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut fw = Framework::subscribe(agent.url(), ContentType::Protobuf, "image-fw").await;
            fw.event_timeout = scaled(Duration::from_secs(60));
            run_tasks(&mut fw, tasks).await
        });
    use mesos::{TaskState, task_status::Reason};
    let state = |id: &str| (done[id].state(), done[id].message().to_string());
    assert_eq!(state("docker-shell").0, TaskState::TaskFinished, "{done:?}");
    let logs = agent.berth(&["logs", "docker-shell"]);
    assert_stdout(&logs, "ID=berth-test");
    assert_stdout(&logs, "sandbox=/mnt/mesos/sandbox");
    assert_eq!(
        state("appc-defaults").0,
        TaskState::TaskFinished,
        "{done:?}"
    );
    let logs = agent.berth(&["logs", "appc-defaults"]);
    assert_stdout(&logs, "cmd:1000:1000:/work:/home/app:hello-from-image");
    let (s, message) = state("no-command");
    assert_eq!(s, TaskState::TaskError, "{message}");
    assert_eq!(done["no-command"].reason(), Reason::TaskInvalid);
    assert!(message.contains("no command"), "{message}");
    let (s, message) = state("unknown");
    assert_eq!(s, TaskState::TaskFailed, "{message}");
    assert_eq!(done["unknown"].reason(), Reason::ContainerLaunchFailed);
    assert!(message.contains(&unknown), "{message}");
    agent.assert_no_leftovers();
}
