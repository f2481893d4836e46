import Foundation
import KithTestSupport
import Testing

@testable import KithLMDB

/// A fresh directory under the system temp dir, removed by `cleanup`.
func temporaryDirectory(_ name: String = #function) -> String {
    let base = FileManager.default.temporaryDirectory.appendingPathComponent("kith-tests")
    let path = base.appendingPathComponent("\(name.filter(\.isLetter))-\(UUID().uuidString)").path
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func cleanup(_ path: String) { try? FileManager.default.removeItem(atPath: path) }

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

private struct Planned: Error {}

@Suite("LMDB environment")
struct LMDBEnvironmentTests {
    @Test func writesCommitOnReturnAndAbortOnThrow() throws {
        let path = temporaryDirectory()
        defer { cleanup(path) }
        let env = try LMDBEnvironment(path: path)
        let db = try env.database(named: "things")
        try env.write { txn in try txn.put(db, bytes("a"), bytes("1")) }
        #expect(throws: Planned.self) {
            try env.write { txn in
                try txn.put(db, bytes("b"), bytes("2"))
                throw Planned()
            }
        }
        let (a, b) = try env.read { txn in (try txn.get(db, bytes("a")), try txn.get(db, bytes("b"))) }
        #expect(a == bytes("1"))
        #expect(b == nil)
    }

    @Test func dataSurvivesReopening() throws {
        let path = temporaryDirectory()
        defer { cleanup(path) }
        do {
            let env = try LMDBEnvironment(path: path)
            let db = try env.database(named: "things")
            try env.write { txn in for i in 0..<1_000 { try txn.put(db, bytes("k\(i)"), bytes("v\(i)")) } }
        }
        let env = try LMDBEnvironment(path: path)
        #expect(env.staleReadersCleared == 0)
        let db = try env.database(named: "things", create: false)
        let (count, last) = try env.read { txn in (try txn.count(db), try txn.get(db, bytes("k999"))) }
        #expect(count == 1_000)
        #expect(last == bytes("v999"))
    }

    @Test("a value is lent where it lies: the bytes get copies out, nil for a missing key, an empty value as empty")
    func valuesAreLentInPlace() throws {
        let path = temporaryDirectory()
        defer { cleanup(path) }
        let env = try LMDBEnvironment(path: path)
        let db = try env.database(named: "things")
        let large = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 * 31) }  // an overflow page
        try env.write { txn in
            try txn.put(db, bytes("small"), bytes("value"))
            try txn.put(db, bytes("large"), large)
            try txn.put(db, bytes("empty"), [])
        }
        try env.read { txn in
            for key in ["small", "large", "empty"] {
                let lent = try bytes(key).withUnsafeBytes { try txn.withValue(db, $0) { Array($0) } }
                #expect(lent == (try txn.get(db, bytes(key))))
            }
            #expect(try bytes("large").withUnsafeBytes { try txn.withValue(db, $0) { $0.count } } == large.count)
            #expect(try bytes("none").withUnsafeBytes { try txn.withValue(db, $0) { _ in true } } == nil)
        }
        // Inside a write, before and after a put in the same transaction.
        try env.write { txn in
            #expect(try bytes("small").withUnsafeBytes { try txn.reader.withValue(db, $0) { Array($0) } } == bytes("value"))
            try txn.put(db, bytes("small"), bytes("changed"))
            #expect(try bytes("small").withUnsafeBytes { try txn.reader.withValue(db, $0) { Array($0) } } == bytes("changed"))
        }
    }

    @Test func insertOnlyAndAppendModes() throws {
        let path = temporaryDirectory()
        defer { cleanup(path) }
        let env = try LMDBEnvironment(path: path)
        let db = try env.database(named: "log")
        let (first, second, kept, outOfOrder) = try env.write { txn in
            let first = try txn.put(db, [1], [1], mode: .insertOnly)
            let second = try txn.put(db, [1], [2], mode: .insertOnly)
            try txn.put(db, [2], [2], mode: .append)
            var outOfOrder: LMDBError?
            do { try txn.put(db, [0], [0], mode: .append) } catch let error as LMDBError { outOfOrder = error }
            return (first, second, try txn.get(db, [1]), outOfOrder)
        }
        #expect(first && !second)
        #expect(kept == [1])
        #expect(outOfOrder?.code == .keyExists)
    }

    @Test func scansInKeyOrderByPrefixAndFromAKey() throws {
        let path = temporaryDirectory()
        defer { cleanup(path) }
        let env = try LMDBEnvironment(path: path)
        let db = try env.database(named: "things")
        try env.write { txn in
            for key in ["b/2", "a/1", "b/1", "c/1", "b/3"] { try txn.put(db, bytes(key), bytes(key)) }
        }
        var seen: [String] = []
        var firstTwo: [String] = []
        let last = try env.read { txn in
            try txn.scan(db, prefix: bytes("b/")) { key, _ in
                seen.append(String(decoding: key, as: UTF8.self))
                return .next
            }
            try txn.scan(db, from: bytes("b/2")) { key, _ in
                firstTwo.append(String(decoding: key, as: UTF8.self))
                return firstTwo.count == 2 ? .stop : .next
            }
            return try txn.lastKey(db)
        }
        #expect(seen == ["b/1", "b/2", "b/3"])
        #expect(firstTwo == ["b/2", "b/3"])
        #expect(last == bytes("c/1"))
        // A limited deletion takes the first keys in order and leaves the rest.
        let firstChunk = try env.write { txn in try txn.deletePrefix(db, bytes("b/"), limit: 2) }
        let left = try env.read { txn in try txn.get(db, bytes("b/3")) != nil && txn.get(db, bytes("b/2")) == nil }
        #expect(firstChunk == 2 && left)
        let deleted = try env.write { txn in try txn.deletePrefix(db, bytes("b/")) }
        let remaining = try env.read { txn in try txn.count(db) }
        #expect(deleted == 1 && remaining == 2)
    }

    @Test func endedReadsAreRenewedAndSeeTheNewestCommit() throws {
        let path = temporaryDirectory()
        defer { cleanup(path) }
        var configuration = LMDBEnvironment.Configuration()
        configuration.durable = false
        let env = try LMDBEnvironment(path: path, configuration: configuration)
        let db = try env.database(named: "r")
        for value in 0..<20 as Range<UInt8> {
            try env.write { txn in try txn.put(db, [1], [value]) }
            #expect(try env.read { txn in try txn.get(db, [1]) } == [value], "a renewed reader sees the commit before it")
        }
        #expect(env.spareReaderCount == 1)
        // Many at once: each ends up kept or freed, never more than the limit kept.
        DispatchQueue.concurrentPerform(iterations: 32) { _ in
            for _ in 0..<50 { _ = try? env.read { txn in try txn.get(db, [1]) } }
        }
        #expect(env.spareReaderCount >= 1 && env.spareReaderCount <= LMDBEnvironment.spareReaderLimit)
        #expect(try env.read { txn in try txn.get(db, [1]) } == [19])
    }

    @Test func deferredSyncsAreOnlyAskedFor() throws {
        let path = temporaryDirectory()
        defer { cleanup(path) }
        #expect(try !LMDBEnvironment(path: path + "-default").defersMetaSync)
        cleanup(path + "-default")
        var configuration = LMDBEnvironment.Configuration()
        configuration.allowsDeferredSync = true
        var env: LMDBEnvironment? = try LMDBEnvironment(path: path, configuration: configuration)
        #expect(env!.defersMetaSync)
        let db = try env!.database(named: "d")
        // A deferred commit is visible at once, and durable after a sync (or any later write).
        try env!.write(deferringSync: true) { txn in try txn.put(db, [1], [10]) }
        #expect(try env!.read { txn in try txn.get(db, [1]) } == [10])
        try env!.sync()
        try env!.write { txn in try txn.put(db, [2], [20]) }
        env = nil
        let reopened = try LMDBEnvironment(path: path, configuration: configuration)
        let again = try reopened.database(named: "d")
        #expect(try reopened.read { txn in [try txn.get(again, [1]), try txn.get(again, [2])] } == [[10], [20]])
    }

    @Test func theMapGrowsInsteadOfFailingAWrite() throws {
        let path = temporaryDirectory()
        defer { cleanup(path) }
        var configuration = LMDBEnvironment.Configuration()
        configuration.mapSize = 1 << 20
        configuration.durable = false
        let env = try LMDBEnvironment(path: path, configuration: configuration)
        let db = try env.database(named: "big")
        let value = [UInt8](repeating: 7, count: 4_000)
        // Readers run concurrently with the writer while the map is resized under them.
        let stop = ManagedAtomicFlag()
        let readers = (0..<2).map { _ in
            Thread.detach {
                while !stop.isSet { _ = try? env.read { txn in try txn.get(db, [0, 0, 0, 1]) } }
            }
        }
        for batch in 0..<40 {
            try env.write { txn in
                for i in 0..<100 { try txn.put(db, [0, 0, UInt8(batch), UInt8(i)], value) }
            }
        }
        stop.set()
        for reader in readers { reader.wait() }
        #expect(env.info().mapSize > 1 << 20)
        let count = try env.read { txn in try txn.count(db) }
        #expect(count == 4_000)
    }

    @Test func backupIsACompactedConsistentCopy() throws {
        let path = temporaryDirectory()
        let copyPath = path + "-backup"
        defer { cleanup(path); cleanup(copyPath) }
        let env = try LMDBEnvironment(path: path)
        let db = try env.database(named: "things"), empty = try env.database(named: "empty")
        try env.write { txn in for i in 0..<5_000 { try txn.put(db, bytes("k\(i)"), [UInt8](repeating: 1, count: 200)) } }
        try env.write { txn in for i in 0..<4_000 { try txn.delete(db, bytes("k\(i)")) } }
        let size = try env.backup(to: copyPath, databases: [db, empty])
        #expect(throws: LMDBError.self) { try env.backup(to: copyPath, databases: [db]) }
        #expect(!FileManager.default.fileExists(atPath: copyPath + "/lock.mdb"), "a backup is a data file alone")
        let copy = try LMDBEnvironment(path: copyPath)
        let copied = try copy.database(named: "things", create: false)
        let count = try copy.read { txn in try txn.count(copied) }
        #expect(count == 1_000)
        let copiedEmpty = try copy.database(named: "empty", create: false)
        #expect(try copy.read { txn in try txn.count(copiedEmpty) } == 0)
        #expect(size == copy.fileSize() && copy.fileSize() < env.fileSize())
    }

    /// Rows put in random order leave leaves about two-thirds full; the backup, written in key
    /// order with every page full, holds the same rows in far fewer pages, across several of
    /// its transactions. (`mdb_env_copy2`'s compacting copy, which backups were before, keeps
    /// each page as it is: the table's pages before are what it would hold.)
    @Test func aBackupFillsEveryPage() throws {
        let path = temporaryDirectory()
        let copyPath = path + "-backup"
        defer { cleanup(path); cleanup(copyPath) }
        let env = try LMDBEnvironment(path: path)
        let db = try env.database(named: "things")
        var random = SystemRandomNumberGenerator()
        var keys = (0..<(LMDBEnvironment.backupBatch + 20_000)).map { bytes("k\($0)") }
        keys.shuffle(using: &random)
        for chunk in stride(from: 0, to: keys.count, by: 5_000) {
            try env.write { txn in
                for key in keys[chunk..<min(chunk + 5_000, keys.count)] { try txn.put(db, key, key + [UInt8](repeating: 7, count: 40)) }
            }
        }
        try env.backup(to: copyPath, databases: [db])
        let copy = try LMDBEnvironment(path: copyPath)
        let copied = try copy.database(named: "things", create: false)
        var original: [[UInt8]] = [], backedUp: [[UInt8]] = []
        try env.read { txn in
            try txn.scan(db) { key, value in
                original.append(key + value); return .next
            }
        }
        try copy.read { txn in
            try txn.scan(copied) { key, value in
                backedUp.append(key + value); return .next
            }
        }
        #expect(backedUp == original && original.count == keys.count)
        let (before, after) = (try env.read { txn in try txn.bytes(db) }, try copy.read { txn in try txn.bytes(copied) })
        #expect(Double(after) < 0.8 * Double(before), "the table's pages: \(before) bytes before, \(after) in the backup")
    }

    @Test func errorsCarryTheCallAndLMDBsMessage() throws {
        let path = temporaryDirectory()
        defer { cleanup(path) }
        let env = try LMDBEnvironment(path: path)
        let db = try env.database(named: "things")
        do {
            try env.write { txn in try txn.put(db, [UInt8](repeating: 1, count: 600), [1]) }
            Issue.record("a 600-byte key was accepted")
        } catch let error as LMDBError {
            #expect(error.code == .badValueSize)
            #expect(error.operation == "mdb_put things")
        }
        #expect(throws: LMDBError.self) { try env.database(named: "missing", create: false) }
        #expect(throws: LMDBError.self) { try LMDBEnvironment(path: "/proc/kith-cannot-write-here") }
    }
}

/// A flag shared with reader threads in the growth test.
final class ManagedAtomicFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    func set() { lock.withLock { value = true } }
}

extension Thread {
    /// Starts `body` on a new thread; `wait()` on the result joins it.
    static func detach(_ body: @escaping @Sendable () -> Void) -> ThreadJoin {
        let join = ThreadJoin()
        let thread = Thread {
            body()
            join.finish()
        }
        thread.start()
        return join
    }
}

final class ThreadJoin: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    func finish() { done.signal() }
    func wait() { done.wait() }
}
