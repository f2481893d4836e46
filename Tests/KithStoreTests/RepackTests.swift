import KithCRDT
import KithLMDB
import KithProfile
import Testing

@testable import KithStore
@testable import KithStoreLMDB

/// Rows written again in their stored order fill their pages (`SealedWriting.repack`).
@Suite("Repacking rows")
struct RepackTests {
    /// Heads of 3,000 identifiers, in random key order (pseudonyms) over 30 transactions: random
    /// bytes, or words that deflate (`compressible`).
    static func storeWithRandomRows(_ path: String, compressible: Bool = false) throws -> LMDBProfileStore {
        let store = try SealingTests.open(path)
        var random = SplitMix64(seed: 7)
        let words = ["Order Completed ", "revenue ", "currency USD ", "Product Viewed ", "product_id ", "page /home "]
        for batch in 0..<30 {
            try store.write { writer in
                for number in 0..<100 {
                    let owner = Identifier(kind: .userId, value: "user-\(batch)-\(number)")!
                    let size = 120 + Int(random.next() % 80)
                    let head =
                        compressible
                        ? Array((0..<20).map { _ in words[Int(random.next() % 6)] }.joined().utf8.prefix(size))
                        : (0..<size).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                    try writer.put(.documents, documentKey(owner.key, .head), head, mode: .upsert)
                }
            }
        }
        return store
    }

    /// The stored rows, raw.
    static func storedRows(_ store: LMDBProfileStore) throws -> [[UInt8]: [UInt8]] {
        try store.environment.read { txn in
            var rows: [[UInt8]: [UInt8]] = [:]
            try LMDBReading(reader: txn, tables: store.tables).scan(.documents, from: []) { key, value in
                rows[key] = value
                return .next
            }
            return rows
        }
    }

    /// Repacking rows, in steps or at once, leaves the same bytes; at once in at most
    /// four-fifths of the pages. (Steps gain less when nothing shrank: a step's last rows go
    /// back in front of the next step's first page, whose separator in its parent may lie below
    /// them, and rows put in front of a page split it in the middle.)
    @Test func repackedRowsAreTheSameBytesInFewerPages() throws {
        let path = SealingTests.directory()
        defer { SealingTests.remove(path) }
        let store = try Self.storeWithRandomRows(path)
        let before = try Self.storedRows(store)
        let pagesBefore = try store.tableBytes()["documents", default: 0]
        var (start, steps, repacked): ([UInt8], Int, Int) = ([], 0, 0)
        while true {
            let (rows, next) = try store.write { writer in
                try #require(writer as? LedgerBlockWriting).repack(from: start, beforeBucket: DigestTreeShape.bucketCount, atMost: 400)
            }
            repacked += rows
            steps += 1
            guard let next else { break }
            start = next
        }
        #expect(try Self.storedRows(store) == before)
        #expect(repacked == before.count && steps == (before.count + 399) / 400, "\(repacked) rows in \(steps) steps")
        let atOnce = try store.write { writer in
            try #require(writer as? LedgerBlockWriting).repack(from: [], beforeBucket: DigestTreeShape.bucketCount, atMost: 10_000)
        }
        let pagesAfter = try store.tableBytes()["documents", default: 0]
        #expect(try Self.storedRows(store) == before)
        #expect(atOnce.rows == before.count && atOnce.next == nil)
        #expect(pagesAfter * 5 <= pagesBefore * 4, "\(pagesBefore) → \(pagesAfter) bytes of pages")
        #expect(try store.view(of: Identifier(kind: .userId, value: "user-3-4")!) == nil)
        #expect(try store.read { try $0.get(.documents, documentKey(Identifier(kind: .userId, value: "user-3-4")!.key, .head)) } != nil)
    }

    /// A sweep pass repacks the whole table, step by step, each step the buckets it walked
    /// after deflating their rows: the rows read as before, in far fewer pages (rows deflated
    /// where they lie would leave their pages as many).
    @Test func aSweepPassRepacksTheTable() throws {
        let path = SealingTests.directory()
        defer { SealingTests.remove(path) }
        let store = try Self.storeWithRandomRows(path, compressible: true)
        let rows = try Self.storedRows(store).count
        let engineRows = try rawEntries(store)
        let pagesBefore = try store.tableBytes()["documents", default: 0]
        var pass = RetentionStep()
        var step: RetentionStep
        repeat {
            step = try store.expire(under: .none, now: 0, buckets: 64)
            pass.add(step)
        } while !step.passEnded
        #expect(pass.rowsRepacked == rows && pass.rowsDeflated == rows, "\(pass.rowsRepacked) and \(pass.rowsDeflated) of \(rows)")
        let pagesAfter = try store.tableBytes()["documents", default: 0]
        #expect(pagesAfter * 10 <= pagesBefore * 6, "\(pagesBefore) → \(pagesAfter) bytes of pages")
        let after = try rawEntries(store)
        let documents = { (entries: [(table: Table, key: [UInt8], value: [UInt8])]) in
            entries.filter { $0.table == .documents }.map { $0.key + [0xFF] + $0.value }
        }
        #expect(documents(after) == documents(engineRows))
        // Passes later the same day write nothing again; the first pass of the next day does.
        func passRepacks(at now: Int64) throws -> Int {
            var repacked = 0
            repeat {
                step = try store.expire(under: .none, now: now, buckets: 64)
                repacked += step.rowsRepacked
            } while !step.passEnded
            return repacked
        }
        #expect(try passRepacks(at: RepackSchedule.day - 1) == 0)
        #expect(try passRepacks(at: RepackSchedule.day) == rows)
    }

    /// The first pass of each period repacks (UTC days by default), whenever in it the pass
    /// starts; the first pass ever does; a clock set back repacks at its next pass.
    @Test func repacksOnTheFirstPassOfEachPeriod() {
        let daily = RepackSchedule(periodMillis: RepackSchedule.day)
        let day = RepackSchedule.day
        #expect(daily.repacks(passStartingAt: 5, lastRepackedAt: nil))
        #expect(!daily.repacks(passStartingAt: day - 1, lastRepackedAt: 0) && daily.repacks(passStartingAt: day, lastRepackedAt: day - 1))
        #expect(!daily.repacks(passStartingAt: 3 * day + 7, lastRepackedAt: 3 * day + 1), "an hour's passes: once a day")
        #expect(daily.repacks(passStartingAt: 2 * day, lastRepackedAt: 3 * day), "a clock set back")
        #expect(!daily.repacks(passStartingAt: -1, lastRepackedAt: -day) && daily.repacks(passStartingAt: 0, lastRepackedAt: -1), "before 1970")
        let hourly = RepackSchedule(periodMillis: 3_600_000)
        #expect(hourly.repacks(passStartingAt: 3_600_000, lastRepackedAt: 3_599_999))
    }

    /// Repacking stops before the bucket the walk has not finished, and at its bound; a start
    /// past the bucket goes on to the table's end.
    @Test func repackingStopsAtTheBucketAndTheBound() throws {
        let path = SealingTests.directory()
        defer { SealingTests.remove(path) }
        let store = try Self.storeWithRandomRows(path)
        let keys = try Self.storedRows(store).keys.sorted { $0.lexicographicallyPrecedes($1) }
        let half = DigestTreeShape.bucketCount / 2
        let firstOfHalf = try #require(keys.firstIndex { !$0.lexicographicallyPrecedes(DigestTreeShape.firstBytes(ofBucket: half)) })
        let repack = { (start: [UInt8], bucket: Int, limit: Int) in
            try store.write { writer in try #require(writer as? LedgerBlockWriting).repack(from: start, beforeBucket: bucket, atMost: limit) }
        }
        let toHalf = try repack([], half, 10_000)
        #expect(toHalf.rows == firstOfHalf && toHalf.next == keys[firstOfHalf])
        let bounded = try repack([], half, 100)
        #expect(bounded.rows == 100 && bounded.next == keys[100])
        let pastTheBucket = try repack(keys[firstOfHalf + 10], 1, 10_000)
        #expect(pastTheBucket.rows == keys.count - firstOfHalf - 10 && pastTheBucket.next == nil)
    }
}
