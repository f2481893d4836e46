import KithAPI
import KithJSON
import KithLMDB
import KithStore
import KithStoreLMDB
import Synchronization

/// Gives the data file's free pages back while the node serves (docs/storage.md, "Retention and
/// file size"), when `FileCompactionRule` says the file is due: the one writer starts a
/// compaction between its transactions, the caller's thread (the retention sweeper's) makes the
/// compacting copy while the writer goes on, and the writer swaps it in between two
/// transactions (`LMDBCompaction`).
final class FileCompactor: Sendable {
    let store: LMDBProfileStore
    let rule: FileCompactionRule
    let perform: @Sendable (@escaping @Sendable () -> Void) -> Bool
    let log: Log
    /// The file's size after the last compaction since the node started (`FileCompactionRule`).
    private let compactedBytes = Mutex<Int?>(nil)

    init(store: LMDBProfileStore, rule: FileCompactionRule, perform: @escaping @Sendable (@escaping @Sendable () -> Void) -> Bool, log: Log) {
        self.store = store
        self.rule = rule
        self.perform = perform
        self.log = log
    }

    /// How long the writer waits for a moment with no reader, to start and to swap.
    static let readerWait = 0.2

    enum Outcome: Equatable {
        case notDue
        case compacted
        case gaveUp
    }

    /// Compacts the data file if it is due; says what it did (and logs it).
    func compactIfDue() -> Outcome {
        let usedBytes: Int
        do {
            usedBytes = try store.usedBytes()
        } catch {
            log(.error, "could not read the tables' sizes; no compaction", [("error", .string("\(error)"))])
            return .gaveUp
        }
        guard rule.isDue(fileBytes: store.fileBytes, usedBytes: usedBytes, compactedBytes: compactedBytes.withLock { $0 }) else { return .notDue }
        let store = store
        switch runOnWriter(perform, { try store.startCompaction(waitingUpTo: Self.readerWait) }) {
        case nil: return .gaveUp  // the writer is stopping
        case .failure(let error):
            log(.error, "a compaction of the data file failed to start", [("error", .string("\(error)"))])
            return .gaveUp
        case .success(nil):
            log(.info, "a compaction of the data file gave up: readers kept the store busy", [])
            return .gaveUp
        case .success(let started?):
            return copyAndSwap(started)
        }
    }

    private func copyAndSwap(_ compaction: LMDBCompaction) -> Outcome {
        do {
            try compaction.copy()
        } catch {
            log(.error, "a compacting copy of the data file failed", [("error", .string("\(error)"))])
            return .gaveUp
        }
        let store = store
        switch runOnWriter(perform, { try store.swap(compaction, waitingUpTo: Self.readerWait) }) {
        case nil:
            compaction.abandon()
            return .gaveUp
        case .failure(let error):
            log(.error, "a compaction of the data file failed to swap in", [("error", .string("\(error)"))])
            return .gaveUp
        case .success(.readersBusy):
            log(.info, "a compaction of the data file gave up: readers kept the store busy", [])
            return .gaveUp
        case .success(.tooManyWrites):
            log(.info, "a compaction of the data file gave up: more writes came during the copy than it keeps", [])
            return .gaveUp
        case .success(.swapped(let bytesBefore, let bytesAfter)):
            compactedBytes.withLock { $0 = bytesAfter }
            log(
                .info, "compacted the data file while serving",
                [("bytesBefore", .number(JSONNumber(Int64(bytesBefore)))), ("bytesAfter", .number(JSONNumber(Int64(bytesAfter))))])
            return .compacted
        }
    }
}
