//! Records and ticks: each record through the decoder, the watermark and
//! the window operator (bad records to the dead letters, late ones to the
//! pipeline's late-record action); each tick advances an idle or
//! processing-time watermark and emits updates.

use std::time::Instant;

use super::{DeadLetter, PartitionTask, TaskError};
use crate::format::{DecodeError, RecordBatch, RecordRef, Stage};
use crate::time::Millis;
use crate::window::{Accepted, Event, LateAction, ResultKind};

impl PartitionTask {
    pub(super) fn process(&mut self, batch: RecordBatch) -> Result<(), TaskError> {
        let (now, arrival) = (self.pipeline.clock.wall(), self.pipeline.clock.monotonic());
        self.metrics.records_in.inc_by(batch.len() as u64);
        self.metrics.bytes_in.inc_by(batch.bytes() as u64);
        for record in batch.iter() {
            self.process_record(record, now, arrival)?;
        }
        self.update_consumer_lag();
        Ok(())
    }

    /// One record, decoded at wall-clock `now` and arrived at monotonic
    /// `arrival`.
    fn process_record(&mut self, record: RecordRef, now: Millis, arrival: Millis) -> Result<(), TaskError> {
        if self.next_offset.is_some_and(|next| record.offset < next) {
            // Already in the restored state (fetched before the seek).
            return Ok(());
        }
        if let Some(next) = self.next_offset.filter(|next| record.offset > *next) {
            self.on_offset_jump(next, record.offset);
        }
        self.restored_at = None;
        if let Some(assigned_at) = self.assigned_at.take() {
            self.pipeline.metrics.recovered(assigned_at.elapsed());
        }
        self.changed_since_checkpoint = true;
        let position = record.offset + 1;
        self.next_offset = Some(position);
        let event = match self.pipeline.decoder.decode(record, now) {
            Ok(event) => event,
            Err(error) => return self.reject(record, error),
        };
        let before = self.watermark.current();
        if self.pipeline.policy.late_action == LateAction::Amend {
            // Windows of the record already purged take it in the region.
            let amendments = self.operator.amendments(&event, before);
            self.pending.extend(amendments.into_iter().map(|r| (r, position)));
        }
        if self.operator.process(&event, before) == Accepted::Late {
            self.on_late(&event, record);
        }
        let watermark = self.watermark.observe(event.time, arrival);
        if watermark > before {
            self.operator.advance(watermark);
        }
        if self.operator.pending_results() > 0 {
            self.take_operator_results(position);
        }
        Ok(())
    }

    /// Moves the operator's results to the pending ones, stamped with the
    /// source position, and counts the windows that fired with nothing to
    /// write (their final value already written as an update).
    fn take_operator_results(&mut self, position: i64) {
        self.pending.extend(self.operator.take_results().into_iter().map(|r| (r, position)));
        self.pipeline.metrics.fired(ResultKind::Final, self.operator.take_unchanged_finals());
    }

    fn reject(&mut self, record: RecordRef, error: DecodeError) -> Result<(), TaskError> {
        self.pipeline.metrics.decode_failure(error.stage.as_str());
        if !self.pipeline.policy.tolerates_errors {
            return Err(TaskError::BadRecord {
                topic: self.topic.to_string(),
                partition: self.partition,
                offset: record.offset,
                error,
            });
        }
        tracing::debug!(offset = record.offset, error = %error, "bad record to dead letters");
        // An oversize record would likely be refused by the dead-letter
        // topic too: keep its headers, drop its body.
        let record = if error.stage == Stage::Size { RecordRef { payload: None, ..record } } else { record };
        let record = record.to_record();
        self.dead_letters.push(DeadLetter { record, stage: error.stage.as_str(), reason: error.reason });
        Ok(())
    }

    fn on_late(&mut self, event: &Event, record: RecordRef) {
        let action = self.pipeline.policy.late_action;
        self.pipeline.metrics.late(action);
        match action {
            LateAction::Drop | LateAction::Amend => {}
            LateAction::DeadLetter => self.dead_letters.push(DeadLetter {
                reason: format!(
                    "late: event time {} is behind watermark {} by more than the allowed lateness",
                    event.time,
                    self.watermark.current()
                ),
                record: record.to_record(),
                stage: "late",
            }),
        }
    }

    /// Records `next..offset` never arrived. Compaction and transaction
    /// markers skip offsets too; only a log that now starts past `next`
    /// (retention or deletion removed records before they were processed)
    /// is a loss, counted and logged loudly: nothing can bring them back.
    fn on_offset_jump(&mut self, next: i64, offset: i64) {
        let Some(log) = (self.source.log)() else { return };
        if log.start > next {
            let lost = (log.start.min(offset) - next) as u64;
            self.pipeline.metrics.offset_gap(lost);
            tracing::error!(
                from = next,
                to = log.start,
                lost,
                "records deleted from the partition (retention) before they were processed; continuing after them"
            );
        }
    }

    /// Until the first record past the checkpoint: a log that ends before
    /// the checkpoint's position lost what the checkpoint covers (a
    /// recreated or truncated topic). The statistics only raise the
    /// suspicion: librdkafka reports a partition's high watermark from an
    /// earlier assignment until its first fetch in this one (a zombie that
    /// rejoins its group sees its old one), so the leader confirms it, at
    /// most once per [`LOG_QUERY_INTERVAL`].
    pub(super) async fn check_restored_position(&mut self) -> Result<(), TaskError> {
        let Some(position) = self.restored_at else { return Ok(()) };
        if (self.source.log)().is_none_or(|hint| hint.end >= position)
            || self.log_queried.is_some_and(|at| at.elapsed() < LOG_QUERY_INTERVAL)
        {
            return Ok(());
        }
        self.log_queried = Some(Instant::now());
        match (self.source.query_log)().await {
            Some(log) if log.end < position => {
                Err(TaskError::LogBehindCheckpoint { task: self.id.clone(), position, log_end: log.end })
            }
            _ => Ok(()),
        }
    }

    /// An idle watermark advances by how long the partition has been quiet,
    /// and the statistics can only suggest that it is: a sample taken as a
    /// frozen process wakes (SIGSTOP, a VM pause), or queued while the
    /// dispatch loop was blocked, is delivered fresh but holds a high
    /// watermark from before the records produced meanwhile (chaos seed
    /// 730422: a connector frozen 11 s closed its sessions past them). So
    /// once an idle advance is due, the partition's leader confirms that
    /// the task has everything, at most once per [`QUIET_CONFIRMATION_MS`],
    /// and the quiet time counts up to the latest confirmation only.
    pub(super) async fn confirm_quiet(&mut self) {
        let asked_at = self.pipeline.clock.monotonic();
        if self.pipeline.policy.processing_time
            || !self.watermark.idle_due(asked_at)
            || !self.caught_up()
            || self.quiet_asked_at.is_some_and(|at| asked_at - at < QUIET_CONFIRMATION_MS)
        {
            return;
        }
        self.quiet_asked_at = Some(asked_at);
        let leader = (self.source.query_log)().await;
        if consumer_lag(leader.map(|l| l.end), self.next_offset) == Some(0) {
            self.quiet_confirmed_at = Some(asked_at);
        }
    }

    pub(super) fn on_tick(&mut self) -> Result<(), TaskError> {
        let (now, monotonic) = (self.pipeline.clock.wall(), self.pipeline.clock.monotonic());
        let watermark = if self.pipeline.policy.processing_time {
            self.watermark.observe(now, monotonic)
        } else if self.caught_up() {
            match self.quiet_confirmed_at {
                Some(confirmed) => self.watermark.on_idle(confirmed),
                None => self.watermark.current(),
            }
        } else {
            // Records are waiting (in Kafka or in our queue): the partition is
            // not quiet, the pipeline is behind. Restart the idle clock.
            self.watermark.touch(monotonic);
            self.watermark.current()
        };
        self.operator.advance(watermark);
        if let Some(interval) = self.pipeline.policy.update_interval {
            if self.last_update.elapsed() >= interval {
                self.last_update = Instant::now();
                self.operator.emit_updates();
            }
        }
        self.take_operator_results(self.next_offset.unwrap_or(0));
        self.metrics.open_windows.set(self.operator.open_windows() as i64);
        self.metrics.checkpoint_age.set(self.last_checkpoint.elapsed().as_secs_f64());
        self.update_consumer_lag();
        if watermark > Millis::MIN {
            self.metrics.watermark_lag.set((now - watermark) as f64 / 1000.0);
        }
        Ok(())
    }

    /// Whether every record the partition had when last fetched is processed,
    /// by statistics fresh enough to say so: after the process was frozen
    /// (SIGSTOP, a VM pause) or its dispatch loop blocked, the last ones
    /// predate the records produced meanwhile, and a partition that looked
    /// caught up would advance its idle watermark past them.
    fn caught_up(&self) -> bool {
        let fresh = (self.source.log)().filter(|l| l.observed.elapsed() < FRESH_STATISTICS);
        consumer_lag(fresh.map(|l| l.end), self.next_offset) == Some(0)
    }

    fn update_consumer_lag(&mut self) {
        if let Some(lag) = consumer_lag((self.source.log)().map(|l| l.end), self.next_offset) {
            self.metrics.consumer_lag(lag);
        }
    }
}

/// How often a task asks the leader to confirm a log that seems to end
/// before its checkpoint.
const LOG_QUERY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// How old the partition's statistics may be for an idle decision: three
/// statistics intervals (`statistics.interval.ms` = 500).
const FRESH_STATISTICS: std::time::Duration = std::time::Duration::from_millis(1_500);

/// How often the leader confirms a quiet partition while its idle
/// watermark advances (milliseconds): the watermark trails the latest
/// confirmation by up to this much.
const QUIET_CONFIRMATION_MS: Millis = 1_000;

/// Records the partition holds beyond the task's position: its high
/// watermark (from the client's statistics) minus the next offset to
/// process. Never negative, since the statistics trail the task by up to
/// their interval. `None` while unknown: no statistics yet, or no record
/// seen and no checkpoint (the start offset is the group's committed one,
/// which the task does not know), unless the partition is empty.
fn consumer_lag(high_watermark: Option<i64>, next_offset: Option<i64>) -> Option<i64> {
    match (high_watermark, next_offset) {
        (Some(high), Some(next)) => Some((high - next).max(0)),
        (Some(0), None) => Some(0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::consumer_lag;

    #[test]
    fn consumer_lag_is_high_watermark_minus_next_offset_once_both_are_known() {
        assert_eq!(consumer_lag(Some(100), Some(40)), Some(60));
        assert_eq!(consumer_lag(Some(100), Some(100)), Some(0), "caught up");
        assert_eq!(consumer_lag(Some(90), Some(100)), Some(0), "statistics older than the task's position");
        assert_eq!(consumer_lag(Some(0), None), Some(0), "an empty partition");
        assert_eq!(consumer_lag(Some(5), None), None, "start offset not known yet");
        assert_eq!(consumer_lag(None, Some(7)), None, "no statistics yet");
    }
}
