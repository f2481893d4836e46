import Foundation
import KithCRDT
import KithProfile
import Testing

@testable import KithStore
@testable import KithStoreLMDB

/// A data file replaced by a compacting copy of itself before the store opens.
@Suite("Compacting the data file")
struct DataFileCompactionTests {
    /// The head of `RepackTests.storeWithRandomRows`' user `number` of `batch`.
    static func headKey(batch: Int, number: Int) -> [UInt8] {
        documentKey(Identifier(kind: .userId, value: "user-\(batch)-\(number)")!.key, .head)
    }

    /// `RepackTests.storeWithRandomRows` with 25 of its 30 batches deleted: the file keeps the
    /// pages they took.
    static func storeMostlyDeleted(_ path: String) throws -> LMDBProfileStore {
        let store = try RepackTests.storeWithRandomRows(path)
        try store.write { writer in
            for batch in 0..<25 { for number in 0..<100 { try writer.delete(.documents, headKey(batch: batch, number: number)) } }
        }
        return store
    }

    static func flattened(_ entries: [(table: Table, key: [UInt8], value: [UInt8])]) -> [[UInt8]] {
        entries.map { [UInt8($0.table.rawValue)] + $0.key + [0xFF] + $0.value }
    }

    /// After most rows are deleted the file keeps its pages; compacted, it holds the same rows,
    /// sealed bytes and all, in far fewer bytes, and the store takes writes as before. A copy
    /// left by a stop before the swap is removed first.
    @Test func aCompactedFileHoldsTheSameRowsInFewerBytes() throws {
        let path = SealingTests.directory()
        defer { SealingTests.remove(path) }
        let (engineRows, storedRows): ([[UInt8]], [[UInt8]: [UInt8]])
        do {
            let store = try Self.storeMostlyDeleted(path)
            (engineRows, storedRows) = (Self.flattened(try rawEntries(store)), try RepackTests.storedRows(store))
            #expect(storedRows.count == 500)
        }
        try FileManager.default.createDirectory(atPath: path + "/compacting", withIntermediateDirectories: true)
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: path + "/compacting/data.mdb"))
        let compaction = try #require(try LMDBProfileStore.compactDataFile(path: path))
        #expect(compaction.bytesAfter * 3 < compaction.bytesBefore, "\(compaction)")
        #expect(!FileManager.default.fileExists(atPath: path + "/compacting"))
        let store = try SealingTests.open(path)
        #expect(Self.flattened(try rawEntries(store)) == engineRows)
        #expect(try RepackTests.storedRows(store) == storedRows)
        let owner = Identifier(kind: .userId, value: "user-29-7")!
        try store.write { writer in try writer.put(.documents, documentKey(owner.key, .head), [4, 2], mode: .upsert) }
        #expect(try store.read { try $0.get(.documents, documentKey(owner.key, .head)) } == [4, 2])
    }

    /// A store open elsewhere holds its key file's lock: compacting under it is refused, the
    /// file untouched.
    @Test func compactingAStoreThatIsOpenIsRefused() throws {
        let path = SealingTests.directory()
        defer { SealingTests.remove(path) }
        let store = try RepackTests.storeWithRandomRows(path)
        let before = try RepackTests.storedRows(store)
        #expect(throws: DataKeyError.self) { try LMDBProfileStore.compactDataFile(path: path) }
        #expect(try RepackTests.storedRows(store) == before)
    }

    /// Nothing to compact: no store yet, or no key file for it (the open says so, and no key
    /// file is left behind).
    @Test func withoutAStoreThereIsNothingToCompact() throws {
        let path = SealingTests.directory()
        defer { SealingTests.remove(path) }
        #expect(try LMDBProfileStore.compactDataFile(path: path) == nil)
        do { _ = try RepackTests.storeWithRandomRows(path) }
        #expect(try LMDBProfileStore.compactDataFile(path: path, keyFile: path + ".other-keys") == nil)
        #expect(!FileManager.default.fileExists(atPath: path + ".other-keys"))
    }

    /// The same, while the store is open: writes committed during the copy are in the swapped
    /// file, sealed rows read as before, and `lastCommit` moves on (a site's cached report
    /// keyed by it is not reused).
    @Test func aCompactionWhileOpenKeepsWritesMadeDuringTheCopy() throws {
        let path = SealingTests.directory()
        defer { SealingTests.remove(path) }
        let store = try Self.storeMostlyDeleted(path)
        let (fileBefore, commitBefore) = (store.environment.fileSize(), try store.lastCommit())
        let compaction = try #require(try store.startCompaction(waitingUpTo: 1))
        try compaction.copy()
        try store.write { writer in
            try writer.put(.documents, Self.headKey(batch: 29, number: 7), [4, 2], mode: .upsert)
            try writer.delete(.documents, Self.headKey(batch: 29, number: 8))
        }
        let (engineRows, storedRows) = (Self.flattened(try rawEntries(store)), try RepackTests.storedRows(store))
        let outcome = try store.swap(compaction, waitingUpTo: 1)
        guard case .swapped(let bytesBefore, let bytesAfter) = outcome else {
            Issue.record("not swapped: \(outcome)")
            return
        }
        #expect(bytesBefore == fileBefore && bytesAfter * 3 < bytesBefore, "\(outcome)")
        #expect(Self.flattened(try rawEntries(store)) == engineRows)
        #expect(try RepackTests.storedRows(store) == storedRows)
        #expect(try store.read { try $0.get(.documents, Self.headKey(batch: 29, number: 7)) } == [4, 2])
        #expect(try store.lastCommit() > commitBefore)
        #expect(store.durableLogSequence() == (try store.read { try store.engine.lastSequence(in: $0) }))
    }

    /// The size growth is measured from (`FileCompactionRule`) is kept in the store: a new
    /// store's file, then what each compaction left, while open or before the open, and a
    /// store opened again reads it.
    @Test func theFileSizeGrowthIsMeasuredFromOutlivesTheStore() throws {
        let path = SealingTests.directory()
        defer { SealingTests.remove(path) }
        do {
            let store = try SealingTests.open(path)
            let created = try #require(try store.compactedFileBytes())
            #expect(created > 0 && created <= store.environment.fileSize())
        }
        let swappedBytes: Int
        do {
            let store = try Self.storeMostlyDeleted(path)
            let compaction = try #require(try store.startCompaction(waitingUpTo: 1))
            try compaction.copy()
            guard case .swapped(_, let bytesAfter) = try store.swap(compaction, waitingUpTo: 1) else {
                Issue.record("not swapped")
                return
            }
            swappedBytes = bytesAfter
            #expect(try Self.recordsItsCopy(try store.compactedFileBytes(), reported: bytesAfter))
        }
        #expect(try Self.recordsItsCopy(try SealingTests.open(path).compactedFileBytes(), reported: swappedBytes))
        do {
            let store = try SealingTests.open(path)
            try store.write { writer in
                for number in 0..<2_000 {
                    try writer.put(
                        .documents, documentKey(Identifier(kind: .userId, value: "more-\(number)")!.key, .head), [UInt8](repeating: 7, count: 300),
                        mode: .upsert)
                }
            }
            try store.write { writer in
                for number in 0..<2_000 { try writer.delete(.documents, documentKey(Identifier(kind: .userId, value: "more-\(number)")!.key, .head)) }
            }
        }
        let compaction = try #require(try LMDBProfileStore.compactDataFile(path: path))
        #expect(compaction.bytesAfter < compaction.bytesBefore, "\(compaction)")
        #expect(try Self.recordsItsCopy(try SealingTests.open(path).compactedFileBytes(), reported: compaction.bytesAfter))
    }

    /// The size recorded is the copy's; the file reported after the compaction also holds the
    /// few pages that recording took (the copy has none free).
    static func recordsItsCopy(_ recorded: Int?, reported bytesAfter: Int) -> Bool {
        guard let recorded else { return false }
        return recorded <= bytesAfter && bytesAfter - recorded <= 8 * 4_096
    }

    /// A stop during a compaction leaves the old file whole and the unfinished copy beside it:
    /// the next open serves the old file and removes the copy.
    @Test func aStopDuringACompactionLeavesTheOldFile() throws {
        let path = SealingTests.directory()
        defer { SealingTests.remove(path) }
        let storedRows: [[UInt8]: [UInt8]]
        do {
            let store = try RepackTests.storeWithRandomRows(path)
            let compaction = try #require(try store.startCompaction(waitingUpTo: 1))
            try compaction.copy()
            try store.write { writer in
                try writer.put(.documents, documentKey(Identifier(kind: .userId, value: "user-3-4")!.key, .head), [7], mode: .upsert)
            }
            storedRows = try RepackTests.storedRows(store)
            // The process stops here: a copy in `compacting`, never swapped in. (The test's own
            // objects go; the compaction's would be lost with the process.)
            try FileManager.default.copyItem(atPath: path + "/compacting", toPath: path + "/left")
            compaction.abandon()
        }
        try FileManager.default.moveItem(atPath: path + "/left", toPath: path + "/compacting")
        let store = try SealingTests.open(path)
        #expect(!FileManager.default.fileExists(atPath: path + "/compacting"))
        #expect(try RepackTests.storedRows(store) == storedRows)
    }
}
