import Foundation
import KithAPI
import KithCRDT
import KithProfile
import KithStore
import KithStoreLMDB
import Testing

@testable import KithNode

/// A node's compactor over a real store: the growth its rule measures runs from the store's
/// creation, then from each compaction, and a restarted node measures from the same size.
@Suite("Compacting as the file grows")
struct FileCompactorTests {
    /// Only growth makes a compaction due: the free-page share is never reached.
    static let rule = FileCompactionRule(freeFraction: 0.99, growthFraction: 0.2, minimumFreeBytes: 0)

    static func compactor(_ store: LMDBProfileStore) throws -> FileCompactor {
        try FileCompactor(
            store: store, rule: rule,
            perform: { work in
                work(); return true
            }, log: Log(minimum: .warning))
    }

    /// Rows of 300 bytes under new owners, `count` of them from `first`.
    static func grow(_ store: LMDBProfileStore, from first: Int, count: Int) throws {
        try store.write { writer in
            for number in first..<(first + count) {
                let key = documentKey(Identifier(kind: .userId, value: "grown-\(number)")!, .head)
                try writer.put(.documents, key, [UInt8](repeating: UInt8(truncatingIfNeeded: number), count: 300), mode: .upsert)
            }
        }
    }

    @Test func growthIsMeasuredFromTheLastCompactionAcrossARestart() throws {
        let path = WriteAheadLogTests.scratch()
        defer { try? FileManager.default.removeItem(atPath: path) }  // scratch; a leftover is harmless
        defer { try? FileManager.default.removeItem(atPath: path + ".keys") }  // scratch, as above
        do {
            let store = try LoggedWriterTests.openStore(path)
            let compactor = try Self.compactor(store)
            #expect(compactor.compactIfDue() == .notDue)
            // A new store grows from nothing: due as soon as it has grown a fifth.
            try Self.grow(store, from: 0, count: 3_000)
            guard case .compacted = compactor.compactIfDue() else {
                Issue.record("a new store grown past a fifth was not compacted")
                return
            }
            #expect(compactor.compactIfDue() == .notDue)
        }
        // Restarted: the size the compaction left is still what growth is measured from.
        let store = try LoggedWriterTests.openStore(path)
        let compactor = try Self.compactor(store)
        #expect(compactor.compactIfDue() == .notDue)
        try Self.grow(store, from: 3_000, count: 2_000)
        let outcome = compactor.compactIfDue()
        guard case .compacted(let bytesBefore, let bytesAfter) = outcome else {
            Issue.record("a restarted node's grown file was not compacted: \(outcome)")
            return
        }
        #expect(bytesAfter <= bytesBefore)
        // What it records is the copy's size; the file also holds the few pages that took.
        let recorded = try #require(try store.compactedFileBytes())
        #expect(recorded <= bytesAfter && bytesAfter - recorded <= 8 * 4_096, "recorded \(recorded), file \(bytesAfter)")
    }
}
