import Dispatch
import Foundation
import KithAPI
import KithJSON
import KithProfile
import KithStore
import Synchronization

/// Runs the retention sweep (`ProfileWriting.expire`) in the background: a pass over the whole
/// store every `interval`, one step at a time, each step a job of the one writer queued behind
/// whatever ingest is already waiting — so a sweep never holds ingest back for longer than one
/// step (a few buckets' identifiers). Its own thread waits for each step; no event loop does.
/// It runs without retention rules too: the same steps deflate the ledger blocks ingest left
/// plain. After a pass, the data file is compacted if it is due (`FileCompactor`).
final class RetentionSweeper: @unchecked Sendable {

    private let rules: RetentionRules
    private let store: any ProfileStore
    private let interval: Double
    private let pacing: RetentionPacing
    private let buckets: Int
    private let perform: @Sendable (@escaping @Sendable () -> Void) -> Bool
    private let compactor: FileCompactor?
    private let log: Log
    private let stopping = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let state = NSLock()
    private var stopped = false
    private var started = false
    private var totals = RetentionTotals()

    /// `perform` runs a job on the writer (false once the writer stops).
    init(
        rules: RetentionRules, store: any ProfileStore, interval: Double, pacing: RetentionPacing = RetentionPacing(), buckets: Int = 8,
        compactor: FileCompactor? = nil, log: Log, perform: @escaping @Sendable (@escaping @Sendable () -> Void) -> Bool
    ) {
        precondition(interval > 0 && buckets > 0, "a retention sweep every \(interval) s over \(buckets) buckets a step")
        self.rules = rules
        self.store = store
        self.interval = interval
        self.pacing = pacing
        self.buckets = buckets
        self.log = log
        self.compactor = compactor
        self.perform = perform
    }

    /// What the sweeps have dropped since the node started, and the compactions of the data file.
    var dropped: RetentionTotals {
        var dropped = state.withLock { totals }
        (dropped.compactions, dropped.compactionsGivenUp) = compactor?.counts ?? (0, 0)
        return dropped
    }

    func start() {
        state.withLock { started = true }
        let thread = Thread { [self] in
            defer { finished.signal() }
            while stopping.wait(timeout: .now() + interval) == .timedOut {
                guard sweepOnce() else { return }
            }
        }
        thread.name = "kith-retention"
        thread.start()
    }

    /// Stops after the step under way.
    func stop() {
        let running = state.withLock {
            stopped = true
            return started
        }
        guard running else { return }
        stopping.signal()
        finished.wait()
    }

    /// One pass, step by step, each followed by the pause `pacing` asks for. False when the
    /// node is stopping or the writer refused a step.
    private func sweepOnce() -> Bool {
        var pass = RetentionStep()
        var writerNanoseconds: UInt64 = 0
        while !pass.passEnded {
            if state.withLock({ stopped }) { return false }
            let (rules, store, buckets) = (rules, store, buckets)
            // Timed on the writer: the time it spent, not the time the step waited for it.
            let stepped = runOnWriter(perform) { () throws -> (RetentionStep, UInt64) in
                let start = DispatchTime.now().uptimeNanoseconds
                let step = try store.expire(under: rules, now: unixMillis(), buckets: buckets)
                return (step, DispatchTime.now().uptimeNanoseconds - start)
            }
            switch stepped {
            case nil:
                return false
            case .success(let (step, nanoseconds)):
                pass.add(step)
                pass.passEnded = step.passEnded
                writerNanoseconds += nanoseconds
                let pause = pacing.pause(afterStepTaking: nanoseconds)
                if !pass.passEnded, pause > 0, stopping.wait(timeout: .now() + .nanoseconds(Int(min(pause, UInt64(Int.max))))) == .success {
                    return false
                }
            case .failure(let error):
                log(.error, "a retention step failed; the next pass tries again", [("error", .string("\(error)"))])
                return true
            }
        }
        state.withLock {
            totals.passes += 1
            totals.eventsDropped += pass.eventsDropped
            totals.traitsDropped += pass.traitsDropped
            totals.messagesDropped += pass.messagesDropped
            totals.grantsDropped += pass.grantsDropped
            totals.blocksDeflated += pass.blocksDeflated
            totals.rowsDeflated += pass.rowsDeflated
            totals.rowsRepacked += pass.rowsRepacked
            totals.writerSeconds += Double(writerNanoseconds) / 1e9
        }

        log(
            .info, "retention pass",
            [
                ("identifiers", .number(JSONNumber(Int64(pass.identifiers)))), ("eventsDropped", .number(JSONNumber(Int64(pass.eventsDropped)))),
                ("traitsDropped", .number(JSONNumber(Int64(pass.traitsDropped)))),
                ("messagesDropped", .number(JSONNumber(Int64(pass.messagesDropped)))),
                ("grantsDropped", .number(JSONNumber(Int64(pass.grantsDropped)))),
                ("blocksDeflated", .number(JSONNumber(Int64(pass.blocksDeflated)))),
                ("rowsDeflated", .number(JSONNumber(Int64(pass.rowsDeflated)))),
                ("rowsRepacked", .number(JSONNumber(Int64(pass.rowsRepacked)))),
                ("writerMillis", .number(JSONNumber(Int64(writerNanoseconds / 1_000_000)))),
            ])
        _ = compactor?.compactIfDue()  // it logs and counts what it did
        return true
    }
}
