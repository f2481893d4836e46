import KithAPI
import KithJSON
import KithLMDB
import KithStore
import KithStoreLMDB
import Synchronization

/// Gives the data file's free pages back while the node serves (docs/storage.md, "Compaction
/// while serving"): after a retention pass when `FileCompactionRule` says the file is due, or
/// when an operator asks (`POST /v1/admin/compact`, `kith compact`). The one writer starts a
/// compaction between its transactions, the caller's thread (the sweeper's, or a background
/// one) makes the compacting copy while the writer goes on, and the writer swaps it in between
/// two transactions (`LMDBCompaction`). One compaction at a time.
final class FileCompactor: Sendable {
    let store: LMDBProfileStore
    /// When a compaction is due after a pass; nil: only when asked.
    let rule: FileCompactionRule?
    let perform: @Sendable (@escaping @Sendable () -> Void) -> Bool
    let log: Log
    private struct State {
        var running = false
        /// The file's size after the last compaction, or when the store was created
        /// (`FileCompactionRule`; kept in the store, so it outlives a restart).
        var compactedBytes: Int?
        var compactions = 0
        var givenUp = 0
    }
    private let state = Mutex(State())

    init(
        store: LMDBProfileStore, rule: FileCompactionRule?, perform: @escaping @Sendable (@escaping @Sendable () -> Void) -> Bool, log: Log
    ) throws {
        self.store = store
        self.rule = rule
        self.perform = perform
        self.log = log
        let compactedBytes = try store.compactedFileBytes()
        state.withLock { $0.compactedBytes = compactedBytes }
    }

    /// How long the writer waits for a moment with no reader, to start and to swap.
    static let readerWait = 0.2

    /// Compactions swapped in since the node started, and those that gave up.
    var counts: (compactions: Int, givenUp: Int) { state.withLock { ($0.compactions, $0.givenUp) } }

    /// Compacts the data file if the rule says it is due; `.notDue` without a rule.
    func compactIfDue() -> DataFileCompactionOutcome {
        guard let rule else { return .notDue }
        let usedBytes: Int
        do {
            usedBytes = try store.usedBytes()
        } catch {
            return gaveUp("could not read the tables' sizes: \(error)")
        }
        guard rule.isDue(fileBytes: store.fileBytes, usedBytes: usedBytes, compactedBytes: state.withLock { $0.compactedBytes }) else {
            return .notDue
        }
        return compact()
    }

    /// Compacts the data file now, whatever its free pages (logs and counts what happened).
    func compact() -> DataFileCompactionOutcome {
        let started = state.withLock { state -> Bool in
            guard !state.running else { return false }
            state.running = true
            return true
        }
        guard started else { return .running }
        defer { state.withLock { $0.running = false } }
        let store = store
        switch runOnWriter(perform, { try store.startCompaction(waitingUpTo: Self.readerWait) }) {
        case nil: return gaveUp("the node is stopping")
        case .failure(let error): return gaveUp("it failed to start: \(error)")
        case .success(nil): return gaveUp("readers kept the store busy")
        case .success(let compaction?): return copyAndSwap(compaction)
        }
    }

    private func copyAndSwap(_ compaction: LMDBCompaction) -> DataFileCompactionOutcome {
        do {
            try compaction.copy()
        } catch {
            return gaveUp("the compacting copy failed: \(error)")
        }
        let store = store
        // The old file's blocks are freed here, not on the writer.
        defer { compaction.releaseOldFile() }
        switch runOnWriter(perform, { try store.swap(compaction, waitingUpTo: Self.readerWait) }) {
        case nil:
            compaction.abandon()
            return gaveUp("the node is stopping")
        case .failure(let error): return gaveUp("the swap failed: \(error)")
        case .success(.readersBusy): return gaveUp("readers kept the store busy")
        case .success(.tooManyWrites): return gaveUp("more writes came during the copy than its journal keeps")
        case .success(.swapped(let bytesBefore, let bytesAfter)):
            state.withLock { state in
                state.compactedBytes = bytesAfter
                state.compactions += 1
            }
            log(
                .info, "compacted the data file while serving",
                [("bytesBefore", .number(JSONNumber(Int64(bytesBefore)))), ("bytesAfter", .number(JSONNumber(Int64(bytesAfter))))])
            return .compacted(bytesBefore: bytesBefore, bytesAfter: bytesAfter)
        }
    }

    private func gaveUp(_ reason: String) -> DataFileCompactionOutcome {
        state.withLock { $0.givenUp += 1 }
        log(.info, "a compaction of the data file gave up", [("reason", .string(reason))])
        return .gaveUp(reason)
    }
}
