//! The order between two writes in flight: a later write takes each step (its transaction
//! id, its insert, its commit) only after the write before it has taken the same step, and
//! gives up if that write fails. So with two batches in flight, a batch's cursor never
//! commits before the records of the batch before it, and a source's batches keep their
//! submission order in the log.

use tokio::sync::watch;

use super::WriteError;

/// How far a write has come, in the order a write takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Step {
    Started,
    /// Its transaction exists (and has its id).
    Begun,
    /// Its rows are inserted (and locked until the commit).
    Inserted,
    Committed,
    /// It ended without committing; whatever comes after it must not commit either.
    Failed,
}

/// One write's place in the order: the progress of the write before it, and its own.
pub(crate) struct Order {
    earlier: Option<watch::Receiver<Step>>,
    mine: watch::Sender<Step>,
}

impl Order {
    /// A write with none before it in flight.
    pub(crate) fn alone() -> Order {
        Order::after(None)
    }

    /// A write that follows the one whose progress `earlier` reports.
    pub(crate) fn after(earlier: Option<watch::Receiver<Step>>) -> Order {
        Order {
            earlier,
            mine: watch::Sender::new(Step::Started),
        }
    }

    /// This write's progress, for the write after it.
    pub(crate) fn progress(&self) -> watch::Receiver<Step> {
        self.mine.subscribe()
    }

    /// Wait until the write before has taken `step`; [`WriteError::Cancelled`] if it failed
    /// (or was dropped) first.
    pub(crate) async fn earlier(&mut self, step: Step) -> Result<(), WriteError> {
        let Some(earlier) = &mut self.earlier else {
            return Ok(());
        };
        let reached = earlier
            .wait_for(|s| *s == Step::Failed || *s >= step)
            .await
            .map(|s| *s);
        match reached {
            Ok(Step::Failed) | Err(_) => Err(WriteError::Cancelled),
            Ok(_) => Ok(()),
        }
    }

    /// This write has taken `step`.
    pub(crate) fn mark(&self, step: Step) {
        self.mine.send_replace(step);
    }
}

impl Drop for Order {
    /// A write that ends (or is dropped) without committing fails whatever follows it.
    fn drop(&mut self) {
        self.mine.send_if_modified(|s| {
            let failed = *s != Step::Committed;
            if failed {
                *s = Step::Failed;
            }
            failed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_later_write_waits_for_each_step_and_gives_up_when_the_earlier_fails() {
        let first = Order::alone();
        let mut second = Order::after(Some(first.progress()));
        let waiting = tokio::spawn(async move {
            second.earlier(Step::Inserted).await?;
            second.mark(Step::Inserted);
            second.earlier(Step::Committed).await?;
            Ok::<_, WriteError>(second)
        });
        first.mark(Step::Begun);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "begun is not inserted");
        first.mark(Step::Inserted);
        // The earlier write fails before its commit: the later one must not commit.
        drop(first);
        let outcome = waiting.await.unwrap();
        assert!(
            matches!(outcome, Err(WriteError::Cancelled)),
            "{:?}",
            outcome.err()
        );

        let first = Order::alone();
        let mut second = Order::after(Some(first.progress()));
        first.mark(Step::Committed);
        drop(first);
        second
            .earlier(Step::Committed)
            .await
            .expect("committed stays committed");
        let third = Order::after(Some(second.progress()));
        drop(second);
        let mut third = third;
        assert!(matches!(
            third.earlier(Step::Begun).await,
            Err(WriteError::Cancelled)
        ));
    }
}
