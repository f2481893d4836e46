import Foundation
import KithCRDT
import Synchronization
import Testing

@testable import KithLMDB

private func key(_ index: Int) -> [UInt8] { Array("key-\(String(index, radix: 16))".utf8) }
private func value(_ index: Int, _ version: Int = 0) -> [UInt8] { Array(repeating: UInt8(truncatingIfNeeded: index &+ version), count: 200) }

/// Every entry of `database`, by key.
private func contents(_ environment: LMDBEnvironment, _ database: LMDBDatabase) throws -> [[UInt8]: [UInt8]] {
    try environment.read { txn in
        var entries: [[UInt8]: [UInt8]] = [:]
        try txn.scan(database) { key, value in
            entries[key] = value
            return .next
        }
        return entries
    }
}

private struct Planned: Error {}

@Suite("LMDB compacting swap")
struct LMDBCompactionTests {
    /// A compaction that gave up left the file, the rows and the journal as they were, and no copy.
    private func expectNothingChanged(
        _ environment: LMDBEnvironment, _ path: String, _ rows: LMDBDatabase, _ model: [[UInt8]: [UInt8]], fileBytes: Int
    ) throws {
        #expect(environment.fileSize() == fileBytes)
        #expect(environment.journal.withLock { $0 == nil })
        #expect(!FileManager.default.fileExists(atPath: LMDBEnvironment.compactingDirectory(of: path)))
        #expect(try contents(environment, rows) == model)
    }

    /// 20,000 rows of 200 bytes, nine in ten then deleted: the file keeps the pages of them all.
    private func filledAndThinned(_ path: String) throws -> (LMDBEnvironment, LMDBDatabase, LMDBDatabase, [[UInt8]: [UInt8]]) {
        let environment = try LMDBEnvironment(path: path)
        let rows = try environment.database(named: "rows")
        let other = try environment.database(named: "other")
        var model: [[UInt8]: [UInt8]] = [:]
        try environment.write { txn in
            for index in 0..<20_000 {
                try txn.put(rows, key(index), value(index))
                model[key(index)] = value(index)
            }
            try txn.put(other, Array("kept".utf8), Array("here".utf8))
        }
        try environment.write { txn in
            for index in 0..<20_000 where index % 10 != 0 {
                try txn.delete(rows, key(index))
                model[key(index)] = nil
            }
        }
        return (environment, rows, other, model)
    }

    @Test("a compaction gives the free pages back and keeps every row, each table at its handle")
    func aCompactionGivesFreePagesBack() throws {
        let path = temporaryDirectory()
        defer { cleanup(path) }
        let (environment, rows, other, model) = try filledAndThinned(path)
        let before = environment.fileSize()
        let lastTransaction = environment.info().lastTransaction
        let compaction = try #require(try environment.startCompaction(waitingUpTo: 1))
        try compaction.copy()
        let outcome = try compaction.swap(waitingUpTo: 1)
        // The old file stays open, its blocks held, until the caller lets it go: then it is
        // closed (its link count is 0: it is the file the copy replaced).
        let retired = compaction.retiredFile.withLock { $0 }
        var status = stat()
        #expect(retired >= 0 && fstat(retired, &status) == 0 && status.st_nlink == 0)
        compaction.releaseOldFile()
        #expect(compaction.retiredFile.withLock { $0 } == -1)
        // A number that moves with every commit moves with the swap too, never back.
        #expect(environment.info().lastTransaction == lastTransaction + 1)
        guard case .swapped(let bytesBefore, let bytesAfter) = outcome else {
            Issue.record("not swapped: \(outcome)")
            return
        }
        #expect(bytesBefore == before)
        #expect(bytesAfter == environment.fileSize())
        #expect(bytesAfter * 4 < before, "compacted \(before) to \(bytesAfter) bytes")
        #expect(try contents(environment, rows) == model)
        #expect(try contents(environment, other) == [Array("kept".utf8): Array("here".utf8)])
        #expect(!FileManager.default.fileExists(atPath: LMDBEnvironment.compactingDirectory(of: path)))
        #expect(environment.journal.withLock { $0 == nil })
        // The same handles write and read on after the swap, and the file stays after reopening.
        try environment.write { txn in try txn.put(rows, key(1), value(1, 9)) }
        let written = environment.fileSize()
        environment.close()
        let reopened = try LMDBEnvironment(path: path)
        let rowsAgain = try reopened.database(named: "rows", create: false)
        var expected = model
        expected[key(1)] = value(1, 9)
        #expect(try contents(reopened, rowsAgain) == expected)
        #expect(reopened.fileSize() == written)
    }

    @Test("writes committed after the start, before and after the copy, are in the swapped file; aborted ones are not")
    func writesDuringACompactionAreKept() throws {
        let path = temporaryDirectory()
        defer { cleanup(path) }
        var (environment, rows, _, model) = try filledAndThinned(path)
        let compaction = try #require(try environment.startCompaction(waitingUpTo: 1))
        try environment.write { txn in
            try txn.put(rows, key(5), value(5, 1))  // a new row
            model[key(5)] = value(5, 1)
            try txn.delete(rows, key(10))  // a row the copy would hold
            model[key(10)] = nil
        }
        try compaction.copy()
        try environment.write { txn in
            try txn.put(rows, key(20), value(20, 2))  // replaced
            model[key(20)] = value(20, 2)
            try txn.put(rows, key(10), value(10, 3))  // back again
            model[key(10)] = value(10, 3)
            try txn.delete(rows, key(5))
            model[key(5)] = nil
            #expect(try txn.put(rows, key(30), value(30, 4), mode: .insertOnly) == false)  // refused: nothing written
        }
        #expect(throws: Planned.self) {
            try environment.write { txn in
                try txn.put(rows, key(40), value(40, 5))
                throw Planned()
            }
        }
        guard case .swapped = try compaction.swap(waitingUpTo: 1) else {
            Issue.record("not swapped")
            return
        }
        #expect(try contents(environment, rows) == model)
    }

    @Test("a reader holding a snapshot makes the swap give up, changing nothing; the next compaction swaps")
    func aBusyReaderMakesTheSwapGiveUp() throws {
        let path = temporaryDirectory()
        defer { cleanup(path) }
        let (environment, rows, _, model) = try filledAndThinned(path)
        let before = environment.fileSize()
        let compaction = try #require(try environment.startCompaction(waitingUpTo: 1))
        try compaction.copy()
        let reading = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0), done = DispatchSemaphore(value: 0)
        Thread {
            _ = try? environment.read { _ in  // the test's own reader; its outcome is not the point
                reading.signal()
                release.wait()
            }
            done.signal()
        }.start()
        reading.wait()
        let outcome = try compaction.swap(waitingUpTo: 0.05)
        release.signal()
        done.wait()
        #expect(outcome == .readersBusy)
        try expectNothingChanged(environment, path, rows, model, fileBytes: before)

        let again = try #require(try environment.startCompaction(waitingUpTo: 1))
        try again.copy()
        #expect(try again.swap(waitingUpTo: 1) != .readersBusy)
        #expect(environment.fileSize() < before)
        #expect(try contents(environment, rows) == model)
    }

    @Test("more writes during the copy than the journal keeps: the compaction gives up, changing nothing")
    func tooManyWritesMakeTheCompactionGiveUp() throws {
        let path = temporaryDirectory()
        defer { cleanup(path) }
        var (environment, rows, _, model) = try filledAndThinned(path)
        let before = environment.fileSize()
        let compaction = try #require(try environment.startCompaction(journalLimit: 10_000, waitingUpTo: 1))
        try compaction.copy()
        try environment.write { txn in
            for index in 0..<100 {
                try txn.put(rows, key(index), value(index, 7))
                model[key(index)] = value(index, 7)
            }
        }
        #expect(try compaction.swap(waitingUpTo: 1) == .tooManyWrites)
        try expectNothingChanged(environment, path, rows, model, fileBytes: before)
    }

    @Test("a leftover copy goes at the start; a compaction let go stops its journal and removes its copy")
    func leftoversAreRemoved() throws {
        let path = temporaryDirectory()
        defer { cleanup(path) }
        let (environment, _, _, _) = try filledAndThinned(path)
        let scratch = LMDBEnvironment.compactingDirectory(of: path)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: scratch + "/data.mdb", contents: Data([1, 2, 3]))
        do {
            let compaction = try #require(try environment.startCompaction(waitingUpTo: 1))
            try compaction.copy()
            #expect(FileManager.default.fileExists(atPath: scratch + "/data.mdb"))
        }
        #expect(!FileManager.default.fileExists(atPath: scratch))
        #expect(environment.journal.withLock { $0 == nil })
    }

    @Test("a writer and readers on other threads go on through copy and swap; every commit is kept", arguments: [1, 2, 3])
    func compactionUnderConcurrentWritesAndReads(seed: Int) throws {
        let path = temporaryDirectory()
        defer { cleanup(path) }
        let (environment, rows, other, initial) = try filledAndThinned(path)
        let stop = Atomic<Bool>(false)
        let model = Mutex(initial)
        let failures = Mutex<[String]>([])
        let finished = DispatchSemaphore(value: 0)
        // The writer: each transaction puts a new row, rewrites or deletes an old one, and moves
        // `a` and `b` together (readers check they are equal in every snapshot).
        Thread {
            var random = SplitMix64(seed: UInt64(seed))
            var round = 0
            while !stop.load(ordering: .relaxed) && round < 200_000 {
                round += 1
                do {
                    try environment.write { txn in
                        let fresh = 20_000 + round
                        try txn.put(rows, key(fresh), value(fresh))
                        let old = Int(random.next() % 20_000)
                        let delete = random.next() % 3 == 0
                        if delete { try txn.delete(rows, key(old)) } else { try txn.put(rows, key(old), value(old, round)) }
                        try txn.put(other, Array("a".utf8), Array("\(round)".utf8))
                        try txn.put(other, Array("b".utf8), Array("\(round)".utf8))
                        model.withLock { model in
                            model[key(fresh)] = value(fresh)
                            model[key(old)] = delete ? nil : value(old, round)
                        }
                    }
                } catch {
                    failures.withLock { $0.append("write: \(error)") }
                    return
                }
            }
            finished.signal()
        }.start()
        Thread {
            while !stop.load(ordering: .relaxed) {
                do {
                    let (a, b) = try environment.read { txn in (try txn.get(other, Array("a".utf8)), try txn.get(other, Array("b".utf8))) }
                    if a != b { failures.withLock { $0.append("a \(String(describing: a)) b \(String(describing: b))") } }
                } catch {
                    failures.withLock { $0.append("read: \(error)") }
                }
            }
            finished.signal()
        }.start()
        usleep(20_000)
        let compaction = try #require(try environment.startCompaction(waitingUpTo: 0.1))
        try compaction.copy()
        usleep(20_000)
        let outcome = try compaction.swap(waitingUpTo: 0.1)
        usleep(20_000)
        stop.store(true, ordering: .relaxed)
        finished.wait()
        finished.wait()
        #expect(failures.withLock { $0 } == [])
        guard case .swapped = outcome else {
            Issue.record("not swapped: \(outcome)")
            return
        }
        #expect(try contents(environment, rows) == model.withLock { $0 })
        let a = try environment.read { try $0.get(other, Array("a".utf8)) }
        let b = try environment.read { try $0.get(other, Array("b".utf8)) }
        #expect(a != nil && a == b)
    }
}
