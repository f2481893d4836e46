import Foundation
import KithAPI
import KithCRDT
import KithLMDB
import KithProfile
import KithStore
import KithStoreLMDB
import Synchronization
import Testing

@testable import KithNode

/// The writer with a write-ahead log, over a real LMDB store: requests are answered once their
/// record is synced, before the transaction holding them commits; the answer names the change
/// the commit will hold, and a store rebuilt from the log after a crash holds exactly that.
@Suite("Writer with a write-ahead log")
struct LoggedWriterTests {
    static let secret = Array("logged-writer-test-secret-000000".utf8)

    static func openStore(_ path: String) throws -> LMDBProfileStore {
        var lmdb = LMDBEnvironment.Configuration()
        lmdb.allowsDeferredSync = true
        return try LMDBProfileStore(path: path, configuration: StoreConfiguration(node: 1, forgetKeySecret: secret), lmdb: lmdb)
    }

    /// A fresh store, its log, and a writer over both.
    static func freshWriter(batching: WriteLogBatching = WriteLogBatching()) throws -> (LMDBProfileStore, LoggedWriter, String) {
        let path = WriteAheadLogTests.scratch()
        let store = try openStore(path)
        let log = try Node.recoverWriteLog(path + "/wal", store: store, log: Log())
        return (store, LoggedWriter(store: store, log: log, batching: batching, claim: { store.claimWriter() }), path)
    }

    /// Submits `count` requests of two messages each (about `customers` customers); waits for
    /// every answer; returns the answers' log sequences, in submission order.
    static func submit(_ writer: LoggedWriter, _ count: Int, prefix: String, customers: Int = 7) -> [UInt64] {
        let answers = Mutex<[Int: UInt64]>([:])
        let answered = DispatchGroup()
        for index in 0..<count {
            answered.enter()
            let deltas = (0..<2).map { part in
                WriteAheadLogTests.delta("\(prefix)-\(index)-\(part)", user: "u-\((index + part) % customers)")
            }
            writer.submit(deltas) { result in
                if case .success(let committed) = result { answers.withLock { $0[index] = committed.ownSequence } }
                answered.leave()
            }
        }
        answered.wait()
        return answers.withLock { answers in (0..<count).compactMap { answers[$0] } }
    }

    @Test("answers come before the commit; a store rebuilt from the log holds what they named")
    func answeredFromTheLog() throws {
        // A transaction that stays open for the whole test: nothing of it commits until stop.
        let open = WriteLogBatching(maximumAgeNanoseconds: 60_000_000_000, idleNanoseconds: 60_000_000_000)
        let (store, writer, path) = try Self.freshWriter(batching: open)
        let sequences = Self.submit(writer, 40, prefix: "a")
        #expect(sequences.count == 40)
        // Every message is one change here, in the order the requests were taken.
        #expect(sequences == (1...40).map { UInt64(2 * $0) })
        #expect(writer.acknowledgedLogSequence == 80)
        // Answered, and not yet readable: the transaction is still open.
        #expect(writer.committedLogSequence == 0)
        #expect(try store.versionVector()[1] == 0)

        // What a crash now would leave on disk: LMDB as of its last commit, the log as synced.
        let crashed = WriteAheadLogTests.scratch()
        try FileManager.default.createDirectory(atPath: crashed, withIntermediateDirectories: true)
        for file in ["data.mdb", "origin"] where FileManager.default.fileExists(atPath: path + "/" + file) {
            try FileManager.default.copyItem(atPath: path + "/" + file, toPath: crashed + "/" + file)
        }
        try FileManager.default.copyItem(atPath: path + "/wal", toPath: crashed + "/wal")
        try FileManager.default.copyItem(atPath: path + ".keys", toPath: crashed + ".keys")

        writer.stop()
        #expect(writer.committedLogSequence == 80)
        #expect(try store.versionVector()[1] == 80)
        let committedDigest = try store.contentDigest()

        let recovered = try Self.openStore(crashed)
        #expect(try recovered.versionVector()[1] == 0)
        let reopened = try Node.recoverWriteLog(crashed + "/wal", store: recovered, log: Log())
        #expect(try recovered.versionVector()[1] == 80)
        #expect(try recovered.writeLogApplied() == 40)
        #expect(try recovered.contentDigest() == committedDigest)
        #expect(try recovered.hasMessage("a-39-1", subject: Identifier(kind: .userId, value: "u-\(40 % 7)")!))
        // The log goes on after what was replayed, and a second recovery finds nothing to apply.
        #expect(reopened.nextSequence == 41)
        #expect(try WriteAheadLog.recover(directory: crashed + "/wal", after: 40).records.isEmpty)
    }

    @Test("a commit's entries are readable by replication once its records are synced")
    func entriesDurableThroughTheLog() throws {
        let (store, writer, _) = try Self.freshWriter()
        let sequences = Self.submit(writer, 5, prefix: "d")
        #expect(sequences.last == 10)
        // No rotation is due, so the store is not synced: only the log vouches for the entries.
        let deadline = Date().addingTimeInterval(5)
        while store.durableLogSequence() < 10 && Date() < deadline { Thread.sleep(forTimeInterval: 0.005) }
        #expect(store.durableLogSequence() == 10)
        #expect(writer.committedLogSequence == 10)
        writer.stop()
    }

    @Test("a request that cannot be applied fails alone; the others land where their answers said")
    func failedRequestAlone() throws {
        let (store, writer, path) = try Self.freshWriter()
        let first = Self.submit(writer, 5, prefix: "b")
        // A message the store refuses: its id puts its ledger key over LMDB's key limit (the
        // API refuses such ids before; this writer must cope all the same).
        let failed = Mutex<Bool?>(nil)
        let done = DispatchSemaphore(value: 0)
        writer.submit([WriteAheadLogTests.delta(String(repeating: "x", count: 600))]) { result in
            failed.withLock { $0 = (try? result.get()) == nil }
            done.signal()
        }
        done.wait()
        let after = Self.submit(writer, 5, prefix: "c")
        writer.stop()
        #expect(failed.withLock { $0 } == true)
        #expect(first + after == (1...10).map { UInt64(2 * $0) })
        #expect(try store.versionVector()[1] == 20)
        #expect(try WriteAheadLog.recover(directory: path + "/wal", after: 0).records.count == 10)
    }
}

/// A writer's transaction outlives the watched age while nobody waits for a commit; once
/// someone does, the next decision ends it.
@Suite("Writer transactions and watchers")
struct LoggedWriterWatchTests {
    @Test("unwatched, a transaction stays open past the watched limit; a watcher ends it")
    func watchedCommitsSooner() throws {
        let watching = Atomic<Bool>(false)
        let batching = WriteLogBatching(
            maximumAgeNanoseconds: 20_000_000, unwatchedMaximumAgeNanoseconds: 60_000_000_000, idleNanoseconds: 60_000_000_000)
        let path = WriteAheadLogTests.scratch()
        let store = try LoggedWriterTests.openStore(path)
        let log = try Node.recoverWriteLog(path + "/wal", store: store, log: Log())
        let writer = LoggedWriter(
            store: store, log: log, batching: batching, claim: { store.claimWriter() }, watched: { watching.load(ordering: .relaxed) })
        defer { writer.stop() }
        #expect(LoggedWriterTests.submit(writer, 3, prefix: "w").count == 3)
        // Answered from the log; ten times the watched limit later, still not committed.
        Thread.sleep(forTimeInterval: 0.2)
        #expect(writer.acknowledgedLogSequence == 6)
        #expect(writer.committedLogSequence == 0)

        // Someone waits: the next request finds the transaction too old and commits it, and its
        // own transaction commits once the watched limit passes.
        watching.store(true, ordering: .relaxed)
        #expect(LoggedWriterTests.submit(writer, 1, prefix: "x").count == 1)
        let deadline = Date().addingTimeInterval(10)
        while writer.committedLogSequence < 8 && Date() < deadline { Thread.sleep(forTimeInterval: 0.005) }
        #expect(writer.committedLogSequence == 8)
    }
}
