//! The `veil` binary: `veil serve` runs a node.

mod admin;
mod aggs;
mod bench;
mod cluster;
mod cluster_cmd;
mod config;
mod coordinator;
mod datadir;
mod error;
mod exceptions;
mod grpc;
mod http;
mod ingest;
mod leaf;
mod metrics;
mod node;
mod pii_cmd;
mod priority;
mod proposer;
mod query;
mod shippers;
mod slots;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Veil: a log store that masks personal data before anything is written.
#[derive(Parser)]
#[command(name = "veil", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a node; with no flags, a one-node cluster with its data under ./data.
    Serve(Box<config::ServeArgs>),
    /// PII tools: `veil pii mask` runs the server's masking engine over stdin.
    #[command(subcommand)]
    Pii(pii_cmd::PiiCommand),
    /// A local cluster: `veil cluster up --nodes 3 --dir DIR`.
    #[command(subcommand)]
    Cluster(cluster_cmd::ClusterCommand),
    /// Load a running node: `veil bench ingest`, `veil bench query`.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Administer a cluster through any node: `veil admin cluster status`, `nodes list|add`,
    /// `shards list|show`, `pii-patterns list|add|change|delete`, `compact`.
    Admin(admin::AdminArgs),
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("veil: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => {
            let config = args.resolve()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("failed to start tokio")?;
            runtime.block_on(serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pii(command) => {
            pii_cmd::run(command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster(command) => {
            cluster_cmd::run(command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(command) => {
            bench::run(command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("failed to start tokio")?;
            Ok(runtime.block_on(admin::run(args)))
        }
    }
}

async fn serve(config: config::NodeConfig) -> anyhow::Result<()> {
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "starting veil");
    let http_listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("failed to bind HTTP on {}", config.http_addr))?;
    let grpc_listener = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("failed to bind gRPC on {}", config.grpc_addr))?;
    let peer_listener = tokio::net::TcpListener::bind(config.peer_addr)
        .await
        .with_context(|| format!("failed to bind the peer address {}", config.peer_addr))?;
    let http_addr = http_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;
    let peer_addr = peer_listener.local_addr()?;
    let member = cluster::Member {
        http_addr: http_addr.to_string(),
        grpc_addr: grpc_addr.to_string(),
        peer_addr: peer_addr.to_string(),
    };
    // A node to be added by a member waits for its invitation, which makes it a member with
    // a directory; one with a directory already (an added node restarted) starts as usual.
    let http_listener = if config.await_add && datadir::read_info(&config.data_dir)?.is_none() {
        cluster::adding::await_add(&config, &member, http_listener).await?
    } else {
        http_listener
    };
    resolve_identity(&config, &member).await?;
    let node = node::Node::start(config, member).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        // An error means the sender is gone, which also means stop.
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // TCP_NODELAY: an answer written in pieces could otherwise wait on the client's delayed
    // ACK (up to 40 ms on Linux). Not measured to matter for `veil bench`, whose HTTP client
    // sets it too; other clients may not.
    let http_listener = axum::serve::ListenerExt::tap_io(http_listener, |stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let http = axum::serve(http_listener, http::router(node.clone()))
        .with_graceful_shutdown(stopped(stop_rx.clone()));
    let grpc = tonic::transport::Server::builder()
        .add_service(
            veil_proto::v1::veil_server::VeilServer::new(grpc::VeilService::new(node.clone()))
                .max_decoding_message_size(node.config.body_bytes_max)
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
        )
        .add_service(
            opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsServiceServer::new(
                shippers::otlp::GrpcLogs::new(node.clone()),
            )
            .max_decoding_message_size(node.config.body_bytes_max)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
        )
        .serve_with_incoming_shutdown(
            tokio_stream_incoming(grpc_listener),
            stopped(stop_rx.clone()),
        );
    let peer = tonic::transport::Server::builder()
        .add_service(
            veil_proto::peer::raft_transport_server::RaftTransportServer::new(
                node.cluster.router.clone(),
            )
            .max_decoding_message_size(veil_raft::PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(veil_raft::PEER_MESSAGE_BYTES_MAX),
        )
        .add_service(
            veil_proto::peer::cluster_server::ClusterServer::new(
                cluster::service::ClusterService::new(node.clone()),
            )
            .max_decoding_message_size(veil_raft::PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(veil_raft::PEER_MESSAGE_BYTES_MAX),
        )
        .serve_with_incoming_shutdown(
            tokio_stream_incoming(peer_listener),
            stopped(stop_rx.clone()),
        );
    let peer_task = tokio::spawn(async move { peer.await.context("peer server failed") });
    let http_task = tokio::spawn(async move { http.await.context("HTTP server failed") });
    let grpc_task = tokio::spawn(async move { grpc.await.context("gRPC server failed") });

    let shutdown = shutdown_signal()?;
    if let Err(e) = node.wait_ready().await {
        // Close the storage before exiting: RocksDB left open crashes the process at exit.
        let _ = stop_tx.send(true);
        node.close().await;
        return Err(e);
    }
    println!(
        "veil ready http={http_addr} grpc={grpc_addr} peer={peer_addr} node={}",
        node.cluster.me
    );
    std::io::stdout()
        .flush()
        .context("failed to write the ready line")?;
    tracing::info!(%http_addr, %grpc_addr, "ready");

    // A WAL fsync that failed (a full disk, an I/O error) leaves nothing that may be
    // acknowledged: the node stops, and a restart recovers from what is on disk. A node
    // removed from the cluster stops too.
    let wal_failed = async {
        loop {
            if let Some(why) = veil_raft::wal_failure() {
                return why;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    let (failed, removed) = tokio::select! {
        _ = shutdown => (None, None),
        why = wal_failed => (Some(why), None),
        _ = node.cluster.wait_removed() => {
            (None, Some((node.cluster.me, node.cluster.cluster_id.clone())))
        }
    };
    if let Some(why) = failed {
        tracing::error!(
            error = %why,
            "the Raft log could not be fsynced: stopping (nothing that fsync covered was \
             acknowledged); restart the node once its disk is writable"
        );
    }
    tracing::info!("shutting down");
    // The receivers may all be gone already if both servers failed; then there is nothing to stop.
    let _ = stop_tx.send(true);
    http_task.await.context("HTTP task panicked")??;
    grpc_task.await.context("gRPC task panicked")??;
    node.close().await;
    // After the node: its groups talk to peers until they stop.
    peer_task.await.context("peer task panicked")??;
    if let Some(why) = failed {
        anyhow::bail!(
            "stopped because the Raft log could not be fsynced ({why}); restart the node once \
             its disk is writable (a full disk: free space first)"
        );
    }
    tracing::info!("stopped");
    if let Some((id, cluster_id)) = removed {
        // Its replicas moved away first (a decommission) or were rebuilt elsewhere (a
        // removal): stopping is the end of its work, not a failure.
        eprintln!("veil: node {id} was removed from cluster {cluster_id}; stopped");
    }
    Ok(())
}

/// Before the node opens its directory: a node started with `--join` and no directory yet
/// asks the cluster to admit it and records the identity it is given (nothing is written when
/// the cluster cannot be reached or refuses); one with a directory checks, when the address
/// answers, that it is the cluster the directory belongs to, and any node with a directory
/// refuses to start when a member says it was removed from the cluster.
async fn resolve_identity(
    config: &config::NodeConfig,
    member: &cluster::Member,
) -> anyhow::Result<()> {
    let info = datadir::read_info(&config.data_dir)?;
    if let Some(info) = &info {
        // A removed node is refused before its groups start campaigning among the members.
        cluster::membership::refuse_if_removed(
            &config.data_dir,
            &info.cluster_id,
            info.node_id,
            config.join.as_deref(),
        )
        .await?;
    }
    let Some(join) = &config.join else {
        return Ok(());
    };
    match info {
        None => {
            let timeout = std::time::Duration::from_millis(config.startup_timeout_ms);
            cluster::adding::join_and_record(config, member, join, timeout).await?;
        }
        Some(info) => {
            let hello: Result<cluster::HelloReply, _> =
                cluster::call_addr(join, "hello", &(), std::time::Duration::from_secs(2)).await;
            match hello {
                Ok(h) if h.cluster_id != info.cluster_id => anyhow::bail!(
                    "data directory {} belongs to cluster {}, but --join {join} is a member of cluster {}",
                    config.data_dir.display(),
                    info.cluster_id,
                    h.cluster_id
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(%join, error = %e,
                    "--join address not reachable; reopening this node's own directory"),
            }
        }
    }
    Ok(())
}

fn tokio_stream_incoming(
    listener: tokio::net::TcpListener,
) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Registers the SIGINT and SIGTERM handlers now (before the ready line, so a signal sent right
/// after it is handled rather than killing the process) and returns a future that completes on
/// the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
