//! A per-pod thread that lives in the pod's network namespace and creates sockets there.
//!
//! A socket belongs to the netns of the thread that calls `socket()`; after that it can be used from
//! any thread. So the worker only creates sockets (listeners at enrolment, upstream sockets per
//! connection) and tokio drives them. Measured cost of the hop: ~18 µs per socket.
use std::{fs::File, sync::mpsc, thread::JoinHandle};

use tokio::sync::oneshot;

use crate::ebpf::netns;

type Job = Box<dyn FnOnce() + Send>;

pub struct NetnsWorker {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("entering the pod netns: {0}")]
    Setns(std::io::Error),
    #[error("spawning the netns worker: {0}")]
    Spawn(std::io::Error),
    #[error("the netns worker is gone")]
    Gone,
}

impl NetnsWorker {
    /// Starts a thread inside `netns`; fails if it cannot enter it.
    pub fn spawn(netns: File, name: &str) -> Result<Self, WorkerError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<()>>();
        let thread = std::thread::Builder::new()
            .name(format!("ns-{}", name.chars().take(12).collect::<String>()))
            .spawn(move || {
                let entered = netns::enter(&netns);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                drop(netns);
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map_err(WorkerError::Spawn)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                tx: Some(tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(WorkerError::Setns(e)),
            Err(_) => Err(WorkerError::Gone),
        }
    }

    /// Runs `f` on the worker (inside the pod netns) and returns its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WorkerError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Box::new(move || {
            let _ = tx.send(f());
        }))?;
        rx.await.map_err(|_| WorkerError::Gone)
    }

    /// Runs `f` on the worker and waits for it from synchronous code.
    pub fn run_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WorkerError> {
        let (tx, rx) = mpsc::channel();
        self.submit(Box::new(move || {
            let _ = tx.send(f());
        }))?;
        rx.recv().map_err(|_| WorkerError::Gone)
    }

    /// Queues `f` on the worker without waiting for it.
    pub fn spawn_job(&self, f: impl FnOnce() + Send + 'static) -> Result<(), WorkerError> {
        self.submit(Box::new(f))
    }

    fn submit(&self, job: Job) -> Result<(), WorkerError> {
        self.tx
            .as_ref()
            .ok_or(WorkerError::Gone)?
            .send(job)
            .map_err(|_| WorkerError::Gone)
    }
}

impl Drop for NetnsWorker {
    fn drop(&mut self) {
        // Closing the channel ends the thread, which releases its reference to the netns.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
