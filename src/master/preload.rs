//! --preload's glue in the master: carrying out the zygote machine's actions on real processes.
//!
//! Why apart from the loop: `zygote` decides (start a zygote per generation, fork from the ready
//! one, replace a dead or stuck one); this module only execs zygotes, asks them for forks over
//! their sockets, matches their answers (and forked workers that died before the answer came) to
//! the pool's workers, and kills what is left at exit. Without --preload none of it runs.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::time::Instant;

use nix::sys::signal::{Signal as Sig, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use crate::lifecycle::ExitStatus;
use crate::pool::WorkerId;
use crate::protocol::Message;
use crate::spawn;
use crate::zygote::{self, ZygoteId, Zygotes};

use super::pipes::{self, Proc};
use super::source::Source;
use super::{Master, send_signal, spawn_error};

/// Orphans reaped lately, remembered this many: a forked worker that dies at once can be reaped
/// before its zygote's answer names it.
const ORPHANS_REMEMBERED: usize = 64;

/// A worker asked of a zygote whose answer has not come yet.
struct Awaiting {
    zygote: ZygoteId,
    asked: spawn::Asked,
}

/// The zygotes' state and processes, and the forks in between.
pub struct Preload {
    pub zygotes: Zygotes,
    pub procs: HashMap<ZygoteId, Proc>,
    /// Forks asked of a zygote, by worker, until it answers.
    awaiting: HashMap<WorkerId, Awaiting>,
    /// (pid, exit) of the latest orphans reaped, newest last.
    orphans: VecDeque<(i32, ExitStatus)>,
}

impl Preload {
    pub fn new(zygotes: Zygotes) -> Preload {
        Preload {
            zygotes,
            procs: HashMap::new(),
            awaiting: HashMap::new(),
            orphans: VecDeque::new(),
        }
    }

    /// An orphan was reaped: remember it, in case it was a forked worker not yet announced.
    pub fn orphan_reaped(&mut self, pid: i32, exit: ExitStatus) {
        if self.orphans.len() == ORPHANS_REMEMBERED {
            self.orphans.pop_front();
        }
        self.orphans.push_back((pid, exit));
    }
}

impl Master {
    fn preload(&mut self) -> &mut Preload {
        self.preload
            .as_mut()
            .expect("a zygote action needs --preload")
    }

    pub(super) fn carry_out_zygote_action(&mut self, action: zygote::Action) {
        let now = Instant::now();
        match action {
            zygote::Action::Start { zygote, generation } => self.start_zygote(zygote, generation),
            zygote::Action::Fork {
                zygote,
                worker,
                generation,
            } => self.fork(zygote, worker, generation),
            zygote::Action::Lost { worker, failure } => self.pool.lost(worker, failure, now),
            zygote::Action::Signal { pid, signal } => send_signal(pid, signal),
            zygote::Action::LogTraceback(text) => crate::logging::traceback(&text),
        }
    }

    /// Execs zygote `id` of `generation`.
    fn start_zygote(&mut self, id: ZygoteId, generation: u64) {
        let Some(launch) = self.config.kind.zygote(generation) else {
            return;
        };
        let listener = self.listener.as_ref().map(|l| l.as_raw_fd());
        match spawn::spawn(&launch, listener, spawn::Control::Socket) {
            Ok(spawned) => {
                let pid = spawned.pid;
                log::info!("event=zygote_spawn zygote={id} gen={generation} pid={pid}");
                let proc_ = pipes::watch(
                    self.poll.registry(),
                    Source::ZygoteStatus(id),
                    self.poll.registry(),
                    Source::ZygoteControl(id),
                    spawned,
                    &launch.bootstrap,
                );
                let preload = self.preload();
                preload.zygotes.started(id, pid);
                preload.procs.insert(id, proc_);
            }
            Err(e) => {
                self.preload().zygotes.start_failed(id);
                let error = spawn_error(&launch, &e);
                self.pool.abort(1, error, Instant::now());
            }
        }
    }

    /// Asks zygote `zygote` for worker `id`; its answer comes up the zygote's status pipe.
    fn fork(&mut self, zygote: ZygoteId, id: WorkerId, generation: u64) {
        let now = Instant::now();
        let preload = self.preload();
        let Some(zproc) = preload.procs.get(&zygote) else {
            self.pool.lost(id, None, now);
            return;
        };
        match spawn::ask_fork(&zproc.control, id, generation) {
            Ok(asked) => {
                preload.awaiting.insert(id, Awaiting { zygote, asked });
            }
            Err(e) => {
                // Its socket is gone (it died) or full (it is stuck): either way it must go.
                log::error!("event=fork_failed worker={id} zygote={zygote} error=\"{e}\"");
                preload.zygotes.broken(zygote, now);
                self.pool.lost(id, None, now);
            }
        }
    }

    /// Zygote `zygote` answered the fork of worker `id`: from now on a worker like any other.
    fn forked(
        &mut self,
        zygote: ZygoteId,
        zygote_pid: i32,
        id: WorkerId,
        pid: Result<i32, String>,
    ) {
        let now = Instant::now();
        let Some(awaiting) = self.preload().awaiting.remove(&id) else {
            // Cancelled meanwhile: with our ends of its pipes closed, the worker sees its control
            // pipe's EOF and exits; it is reaped as an orphan.
            log::debug!("event=fork_unwanted worker={id} zygote={zygote}");
            return;
        };
        match pid {
            Ok(pid) => {
                log::info!(
                    "event=fork worker={id} zygote={zygote} zygote_pid={zygote_pid} pid={pid}"
                );
                let spawned = awaiting.asked.spawned(pid);
                let proc_ = pipes::watch(
                    self.statuses.registry(),
                    Source::Status(id),
                    self.poll.registry(),
                    Source::Control(id),
                    spawned,
                    &[],
                );
                self.procs.insert(id, proc_);
                self.pool.spawned(id, pid);
                // A worker that died before this answer came was reaped as an orphan.
                let orphans = &mut self.preload().orphans;
                if let Some(at) = orphans.iter().position(|(p, _)| *p == pid) {
                    let (_, status) = orphans.remove(at).expect("found above");
                    self.worker_exited(id, pid, status);
                }
            }
            Err(error) => {
                log::error!("event=fork_failed worker={id} zygote={zygote} error={error:?}");
                self.pool.lost(id, None, now);
            }
        }
    }

    /// The pool no longer wants worker `id`, not forked yet. Asked of a zygote that has not
    /// answered by --boot-timeout: that zygote is stuck, and goes. (No shorter timeout: a machine
    /// under heavy load, or a VM stalled for seconds, delays a fork's answer but does not lose it.)
    pub(super) fn cancel(&mut self, id: WorkerId, timed_out: bool) {
        let Some(preload) = &mut self.preload else {
            return;
        };
        preload.zygotes.cancel(id);
        let Some(awaiting) = preload.awaiting.remove(&id) else {
            return;
        };
        if timed_out {
            log::error!(
                "event=fork_failed worker={id} zygote={} error=\"no answer within --boot-timeout\"",
                awaiting.zygote
            );
            preload.zygotes.broken(awaiting.zygote, Instant::now());
        }
    }

    /// The master is exiting: zygotes still there are killed and reaped, so none outlives it.
    pub(super) fn end_zygotes(&mut self) {
        let Some(preload) = &mut self.preload else {
            return;
        };
        for (_, proc_) in preload.procs.drain() {
            let pid = Pid::from_raw(proc_.pid);
            let _ = kill(pid, Sig::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }

    /// A reaped pid that was a zygote: its last lines are read, its unanswered forks are lost.
    /// False when `pid` is no zygote.
    pub(super) fn zygote_reaped(&mut self, pid: i32, exit: ExitStatus) -> bool {
        let Some(preload) = &mut self.preload else {
            return false;
        };
        let Some(zid) = preload
            .procs
            .iter()
            .find(|(_, p)| p.pid == pid)
            .map(|(id, _)| *id)
        else {
            return false;
        };
        let mut proc_ = preload.procs.remove(&zid).expect("found above");
        self.deliver_zygote_messages(zid, &mut proc_);
        self.forget_control(&proc_);
        let preload = self.preload();
        preload.zygotes.exited(zid, exit, Instant::now());
        // What it had not answered will not be forked.
        let unanswered: Vec<WorkerId> = preload
            .awaiting
            .iter()
            .filter(|(_, a)| a.zygote == zid)
            .map(|(id, _)| *id)
            .collect();
        for id in unanswered {
            self.preload().awaiting.remove(&id);
            self.pool.lost(id, None, Instant::now());
        }
        true
    }

    /// Zygote `id`'s pipes are ready (its status lines, or room for its bootstrap).
    pub(super) fn handle_zygote_io(&mut self, id: ZygoteId, source: Source) {
        let Some(mut proc_) = self.preload.as_mut().and_then(|p| p.procs.remove(&id)) else {
            return;
        };
        if source == Source::ZygoteStatus(id) {
            self.deliver_zygote_messages(id, &mut proc_);
        } else {
            pipes::flush_control(self.poll.registry(), &mut proc_);
        }
        self.preload().procs.insert(id, proc_);
    }

    /// A zygote's lines: boot, ready, a fork's answer, or why it failed.
    fn deliver_zygote_messages(&mut self, id: ZygoteId, proc_: &mut Proc) {
        let now = Instant::now();
        for line in pipes::read_status(self.poll.registry(), proc_) {
            let Some(message) = self.parse(proc_.pid, &line) else {
                continue;
            };
            match message {
                Message::Forked { worker, pid } => {
                    self.forked(id, proc_.pid, worker, pid);
                    continue;
                }
                Message::Ready { django: true, .. } => self.shared.set_django(),
                _ => {}
            }
            self.preload().zygotes.message(id, &message, now);
        }
    }
}
