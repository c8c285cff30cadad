//! The operator verbs: `ps`, `logs`, `kill`, `inspect`.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::Value;

use super::{
    KillArgs, LogsArgs, PsArgs, TaskRef, UpdateArgs,
    client::{AgentClient, urlencode},
    run::copy_new_output,
};
use crate::task;

/// `berth ps`.
pub async fn ps(client: &AgentClient, args: PsArgs) -> anyhow::Result<i32> {
    let path = if args.all {
        "/api/berth/v1/tasks?all=1"
    } else {
        "/api/berth/v1/tasks"
    };
    let tasks = client.get_json(path).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&tasks)?);
        return Ok(0);
    }
    let rows: Vec<[String; 8]> = tasks
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let n = |k: &str| t.get(k).and_then(Value::as_f64);
            [
                s("id"),
                s("name"),
                s("state").trim_start_matches("TASK_").to_string(),
                t.get("health")
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_string(),
                n("cpus").map(|c| format!("{c}")).unwrap_or_default(),
                n("mem_mb").map(|m| format!("{m}M")).unwrap_or_default(),
                n("started_at").map(ago).unwrap_or_else(|| "-".into()),
                t.get("exit_code")
                    .and_then(Value::as_i64)
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = [
        "ID", "NAME", "STATE", "HEALTH", "CPUS", "MEM", "STARTED", "EXIT",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(0)
}

fn ago(at: f64) -> String {
    let secs = (task::now() - at).max(0.0) as u64;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// `berth logs`.
pub async fn logs(client: &AgentClient, args: LogsArgs) -> anyhow::Result<i32> {
    // Resolve once so a name keeps meaning the same task while following.
    let task = client
        .get_json(&format!("/api/berth/v1/tasks/{}", urlencode(&args.task)))
        .await?;
    let id = task
        .pointer("/task/id")
        .and_then(Value::as_str)
        .unwrap_or(&args.task)
        .to_string();
    let mut offsets = [
        (!args.stderr_only).then_some(0),
        (!args.stdout_only).then_some(0),
    ];
    loop {
        let state = copy_new_output(client, &id, &mut offsets).await?;
        let done = state.as_deref().is_none_or(task::is_terminal);
        if !args.follow || done {
            if args.follow {
                copy_new_output(client, &id, &mut offsets).await?;
            }
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `berth kill`: asks for the kill and waits until the task is terminal.
pub async fn kill(client: &AgentClient, args: KillArgs) -> anyhow::Result<i32> {
    let mut path = format!("/api/berth/v1/tasks/{}/kill", urlencode(&args.task));
    if let Some(grace) = args.grace {
        path.push_str(&format!("?grace={grace}"));
    }
    let task = client.post_json(&path).await?;
    let id = task
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or(&args.task)
        .to_string();
    let grace = args.grace.unwrap_or(30.0);
    let deadline = Instant::now() + Duration::from_secs_f64(grace) + Duration::from_secs(30);
    while Instant::now() < deadline {
        let record = client
            .get_json(&format!("/api/berth/v1/tasks/{}", urlencode(&id)))
            .await?;
        let state = record
            .pointer("/task/state")
            .and_then(Value::as_str)
            .unwrap_or("");
        if task::is_terminal(state) {
            println!("{id} {state}");
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("task {id} did not end within the grace period plus 30 s")
}

/// `berth update`.
pub async fn update(client: &AgentClient, args: UpdateArgs) -> anyhow::Result<i32> {
    let mut query = Vec::new();
    if let Some(cpus) = args.cpus {
        query.push(format!("cpus={cpus}"));
    }
    if let Some(mem) = args.mem {
        query.push(format!("mem_bytes={mem}"));
    }
    if let Some(high) = args.memory_high {
        query.push(format!("mem_high_bytes={high}"));
    }
    if let Some(pids) = args.pids {
        query.push(format!("pids_max={pids}"));
    }
    if query.is_empty() {
        bail!("nothing to update: give --cpus, --mem, --memory-high or --pids");
    }
    let path = format!(
        "/api/berth/v1/tasks/{}/update?{}",
        urlencode(&args.task),
        query.join("&")
    );
    let task = client.post_json(&path).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&task)?);
    } else {
        let id = task.get("id").and_then(Value::as_str).unwrap_or(&args.task);
        println!("{id} updated");
    }
    Ok(0)
}

/// `berth inspect`.
pub async fn inspect(client: &AgentClient, args: TaskRef) -> anyhow::Result<i32> {
    let task = client
        .get_json(&format!("/api/berth/v1/tasks/{}", urlencode(&args.task)))
        .await?;
    println!("{}", serde_json::to_string_pretty(&task)?);
    Ok(0)
}
