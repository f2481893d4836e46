import Foundation
import KithCRDT
import KithJSON
import KithLMDB
import KithProfile
import KithTestSupport
import Testing

@testable import KithStore
@testable import KithStoreLMDB

/// Ledger rows name the node that accepted each copy of a message, and when: what a site has
/// seen of a customer (`seenBy`) is derived from them, so replicas agree on it whatever order
/// copies, erasures and expiries reach them in.
@Suite("Acceptances of messages")
struct AcceptanceTests {
    static let parser = SegmentMessageParser()
    static let u1 = Identifier(kind: .userId, value: "u-1")!

    /// A message dated in the future: its event time is its receipt time at each node, so two
    /// nodes that take it in at different times hold two copies.
    static func message(_ id: String, user: String = "u-1", receivedAt: Int64) throws -> ProfileDelta {
        try parser.parse(
            try JSONParser.parse(
                Array(#"{"type":"track","event":"Visit","userId":"\#(user)","messageId":"\#(id)","timestamp":"2030-01-01T00:00:00Z"}"#.utf8)),
            receivedAt: receivedAt)
    }

    static func store(_ node: UInt64) -> MemoryProfileStore {
        MemoryProfileStore(configuration: StoreConfiguration(node: node, forgetKeySecret: secret))
    }

    /// Reads everything of `source`'s log that `store` lacks.
    static func pull(_ store: any ProfileStore, from source: any ProfileStore, node: UInt64) throws {
        let entries = try source.changes(after: try store.cursor(of: node), limit: 10_000)
        let held = try store.versionVector()
        try store.applyReplicated(
            entries.filter { !held.covers(origin: $0.origin, sequence: $0.originSequence) }, from: node, through: entries.last?.sequence)
    }

    /// Nodes 5 and 6 each take message m1 in (at the times given), then read each other's logs.
    static func copiesExchanged(at firstAt: Int64, and secondAt: Int64) throws -> (MemoryProfileStore, MemoryProfileStore) {
        let a = store(5), b = store(6)
        try a.apply([try message("m1", receivedAt: firstAt)])
        try b.apply([try message("m1", receivedAt: secondAt)])
        try pull(a, from: b, node: 6)
        try pull(b, from: a, node: 5)
        return (a, b)
    }

    static func documents(_ store: any ProfileStore) throws -> [[UInt8]] {
        try rawEntries(store).filter { $0.table == .documents }.map { $0.key + [0xFF] + $0.value }
    }

    @Test func rowsNameTheNodeThatTookTheMessageIn() throws {
        let site = Self.store(5), core = Self.store(6)
        try site.apply([try Self.message("m1", receivedAt: 1_000)])
        #expect(try site.seenBy(Self.u1) == SeenBy([5: 1_000]))
        try Self.pull(core, from: site, node: 5)
        #expect(try core.seenBy(Self.u1) == SeenBy([5: 1_000]), "a replicated message keeps the node that accepted it")
        try core.apply([try Self.message("m2", receivedAt: 3_000)])
        #expect(try core.seenBy(Self.u1) == SeenBy([5: 1_000, 6: 3_000]))
        #expect(try core.seenBy(Identifier(kind: .userId, value: "u-2")!) == SeenBy(), "nobody: nothing seen")
        // A third node that hears of the site's message from the core still names the site.
        let other = Self.store(7)
        try Self.pull(other, from: core, node: 6)
        #expect(try other.seenBy(Self.u1) == SeenBy([5: 1_000, 6: 3_000]))
        #expect(try Self.documents(other) == Self.documents(core))
    }

    /// A client that sends one message to two nodes: both copies are kept with their
    /// acceptances, in either order; a retry at the same node does not move its first receipt.
    @Test func copiesAcceptedAtTwoNodesAreKeptAlikeInEitherOrder() throws {
        let (a, b) = try Self.copiesExchanged(at: 1_000, and: 2_000)
        #expect(try a.seenBy(Self.u1) == SeenBy([5: 1_000, 6: 2_000]))
        #expect(try Self.documents(a) == Self.documents(b))
        #expect(try a.contentDigest() == b.contentDigest())
        // A message dated in the past has that date at every node: a retry of it at the same
        // node is the same copy, and keeps the node's first receipt.
        let past = #"{"type":"track","event":"Visit","userId":"u-1","messageId":"m2","timestamp":"1970-01-01T00:00:00.500Z"}"#
        try a.apply([try Self.parser.parse(try JSONParser.parse(Array(past.utf8)), receivedAt: 3_000)])
        #expect(try a.seenBy(Self.u1) == SeenBy([5: 3_000, 6: 2_000]))
        let before = try Self.documents(a)
        try a.apply([try Self.parser.parse(try JSONParser.parse(Array(past.utf8)), receivedAt: 4_000)])
        #expect(try a.seenBy(Self.u1) == SeenBy([5: 3_000, 6: 2_000]))
        #expect(try Self.documents(a) == before, "a retry of the same copy changes no row")
    }

    /// An erasure drops the copies it dominates with their acceptances: the replica that held
    /// both copies when the erasure came, and the one that had applied the erasure before the
    /// first copy, end with the same rows and the same `seenBy`.
    @Test func anErasureTakesTheCopiesItDominatesWithTheirAcceptances() throws {
        let a = Self.store(5), b = Self.store(6), c = Self.store(7)
        try a.apply([try Self.message("m1", receivedAt: 100)])
        try Self.pull(c, from: a, node: 5)  // c holds the copy at 100 before the erasure
        let erasure = try a.erase(Self.u1, requestedAt: 150)
        #expect(erasure.boundary == 150)
        try b.apply([try Self.message("m1", receivedAt: 200)])
        try Self.pull(c, from: b, node: 6)  // c joins the copy at 200: both copies, both nodes
        #expect(try c.seenBy(Self.u1) == SeenBy([5: 100, 6: 200]))
        try Self.pull(c, from: a, node: 5)  // the erasure drops the copy at 100 and its acceptance
        try Self.pull(b, from: a, node: 5)  // b: the erasure, and no copy at 100 to drop
        try Self.pull(a, from: b, node: 6)  // a: the copy at 200 arrives after the erasure
        #expect(try c.seenBy(Self.u1) == SeenBy([6: 200]))
        #expect(try Self.documents(c) == Self.documents(a))
        #expect(try a.seenBy(Self.u1) == SeenBy([6: 200]))
        #expect(try b.seenBy(Self.u1) == SeenBy([6: 200]))
        #expect(try Self.documents(a) == Self.documents(b))
    }

    /// Retention drops expired copies with their acceptances, as an erasure does.
    @Test func anExpiryTakesTheExpiredCopiesWithTheirAcceptances() throws {
        let (a, b) = try Self.copiesExchanged(at: 1_000, and: 50_000)
        var rules = RetentionRules()
        rules.events = RetentionRules.Keep(millis: 86_400_000, purpose: "test")
        let now: Int64 = 86_400_000 + 10_000  // the copy at 1,000 is a day old, the one at 50,000 not
        for store in [a, b] { _ = try store.expire(under: rules, now: now, buckets: DigestTreeShape.bucketCount, identifiers: 100) }
        #expect(try a.seenBy(Self.u1) == SeenBy([6: 50_000]))
        #expect(try Self.documents(a) == Self.documents(b))
    }

    /// Rows written before nodes recorded acceptances read as having none, and keep their
    /// bytes: a row without acceptances encodes as such rows always did.
    @Test func rowsWithoutAcceptancesKeepTheFormerBytes() throws {
        let row = LedgerRow(entry: LedgerEntry(type: .track, name: "Visit", time: 5, revenueMicros: nil), event: nil, links: [])
        var former = BinaryWriter()
        row.entry.encode(to: &former)
        former.write(bool: false)
        former.write(count: 0)
        former.write(count: 0)
        former.write(count: 0)
        former.write(string: "")
        #expect(ProfileFormat.encode(row) == [ProfileFormat.version] + former.bytes)
        #expect(try ProfileFormat.decode(LedgerRow.self, from: [ProfileFormat.version] + former.bytes) == row)
        // An empty or unsorted list written where acceptances go is refused, not normalised.
        var empty = former
        empty.write(count: 0)
        #expect(throws: BinaryDecodingError.self) { try ProfileFormat.decode(LedgerRow.self, from: [ProfileFormat.version] + empty.bytes) }
        var unsorted = former
        unsorted.write(sequence: [Acceptance(copyTime: 5, origin: 1, receivedAt: 9), Acceptance(copyTime: 3, origin: 1, receivedAt: 5)]) {
            $1.encode(to: &$0, rowTime: 5)
        }
        #expect(throws: BinaryDecodingError.self) { try ProfileFormat.decode(LedgerRow.self, from: [ProfileFormat.version] + unsorted.bytes) }
        // A receipt that would fall outside ±10^15 ms is refused.
        var far = former
        far.write(count: 1)
        far.write(varint: 0)
        far.write(varint: 1)
        far.write(signed: MessageTimes.limit)
        #expect(throws: BinaryDecodingError.self) { try ProfileFormat.decode(LedgerRow.self, from: [ProfileFormat.version] + far.bytes) }

        // Kept relative to the row's time: the usual one acceptance (the row's own copy, taken
        // in a few seconds after it is dated) costs a handful of bytes, and reads back the same.
        var accepted = row
        accepted.entry.time = 1_760_000_000_000
        accepted.acceptances = [Acceptance(copyTime: 1_760_000_000_000, origin: 12, receivedAt: 1_760_000_004_000)]
        let bytes = ProfileFormat.encode(accepted)
        var plain = accepted
        plain.acceptances = []
        #expect(bytes.count - ProfileFormat.encode(plain).count <= 6)
        #expect(try ProfileFormat.decode(LedgerRow.self, from: bytes) == accepted)
        accepted.acceptances.insert(Acceptance(copyTime: 1_759_000_000_000, origin: 3, receivedAt: 1_758_000_000_000), at: 0)
        #expect(try ProfileFormat.decode(LedgerRow.self, from: ProfileFormat.encode(accepted)) == accepted)
    }

    /// A store written before the revision opens, is marked with it, and keeps its data; a store
    /// of a revision this build does not know is refused at open.
    @Test func storesOfTheFormerRevisionOpenAndOthersAreRefused() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kith-accept-\(UUID().uuidString)").path
        defer {
            // Test clean-up: the directory and key file may be gone already.
            try? FileManager.default.removeItem(atPath: path)
            try? FileManager.default.removeItem(atPath: path + ".keys")
        }
        let configuration = StoreConfiguration(node: 5, forgetKeySecret: secret)
        func open() throws -> LMDBProfileStore { try LMDBProfileStore(path: path, configuration: configuration) }
        func setFormat(_ format: [UInt8]) throws {
            let store = try open()
            try store.environment.write { txn in
                _ = try LMDBWriting(transaction: txn, tables: store.tables).put(.meta, formatMetaKey, format, mode: .upsert)
            }
        }
        func format() throws -> [UInt8]? {
            let store = try open()
            return try store.environment.read { txn in try LMDBReading(reader: txn, tables: store.tables).get(.meta, formatMetaKey) }
        }
        try open().apply([try Self.message("m1", receivedAt: 1_000)])
        #expect(try format() == StoreFormat.current)
        try setFormat([ProfileFormat.version])
        #expect(try open().view(of: Self.u1)?.head.messageCount == 1)
        #expect(try format() == StoreFormat.current, "marked with the revision when opened")
        for revision: UInt8 in [1, 2] {
            try setFormat([ProfileFormat.version, revision])
            #expect(try open().view(of: Self.u1)?.head.messageCount == 1)
            #expect(try format() == StoreFormat.current, "revision \(revision) marked with the current one when opened")
        }
        try setFormat([ProfileFormat.version, 4])
        #expect(throws: StoreCorruption.self) { try open() }
    }
}
