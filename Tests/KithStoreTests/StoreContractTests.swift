import Foundation
import KithCRDT
import KithJSON
import KithLMDB
import KithProfile
import KithTestSupport
import Testing

@testable import KithStore
@testable import KithStoreLMDB

let secret = [UInt8](repeating: 7, count: 32)
let configuration = StoreConfiguration(node: 1, forgetKeySecret: secret)
let hmac = HMACForgetKeyHasher(secret: secret)

/// The two store implementations every contract test runs against.
enum StoreKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case lmdb, memory
    var testDescription: String { rawValue }
}

/// A store and the directory it lives in (removed when the fixture goes away).
final class StoreFixture {
    let kind: StoreKind
    let path: String
    private(set) var store: any ProfileStore

    init(_ kind: StoreKind, mapSize: Int? = nil, byteLimit: Int = Int.max) throws {
        self.kind = kind
        path = FileManager.default.temporaryDirectory.appendingPathComponent("kith-store-\(UUID().uuidString)").path
        store = try Self.open(kind, path: path, mapSize: mapSize, byteLimit: byteLimit)
    }

    static func open(
        _ kind: StoreKind, path: String, mapSize: Int? = nil, byteLimit: Int = Int.max, replicates: Bool = true
    ) throws -> any ProfileStore {
        var configuration = configuration
        configuration.replicates = replicates
        switch kind {
        case .memory: return MemoryProfileStore(configuration: configuration, byteLimit: byteLimit)
        case .lmdb:
            var lmdb = LMDBEnvironment.Configuration()
            lmdb.durable = false
            if let mapSize {
                lmdb.mapSize = mapSize
                lmdb.maximumMapSize = mapSize
            }
            return try LMDBProfileStore(path: path, configuration: configuration, lmdb: lmdb)
        }
    }

    /// Closes and reopens an LMDB store from its directory.
    func reopen(replicates: Bool = true) throws {
        close()
        store = try Self.open(kind, path: path, replicates: replicates)
    }

    /// Lets the store go (its environment and key file close with it).
    func close() {
        store = MemoryProfileStore(configuration: configuration)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
        try? FileManager.default.removeItem(atPath: path + ".keys")
    }
}

/// Every table's entries, for checking what a store physically holds.
func rawEntries(_ store: any ProfileStore) throws -> [(table: Table, key: [UInt8], value: [UInt8])] {
    let backed = store as! any EngineBackedStore
    return try backed.read { reader in
        var all: [(Table, [UInt8], [UInt8])] = []
        for table in Table.allCases {
            try reader.scan(table, prefix: []) { key, value in
                // The file's size when last compacted describes the file, not what it holds.
                if !(table == .meta && key == compactedFileBytesMetaKey) { all.append((table, key, value)) }
                return .next
            }
        }
        return all
    }
}

private func apply(_ deltas: [ProfileDelta], to store: any ProfileStore, random: inout SplitMix64) throws -> [ApplyOutcome] {
    var outcomes: [ApplyOutcome] = []
    var rest = deltas[...]
    while !rest.isEmpty {
        let size = 1 + random.below(120)
        outcomes += try store.apply(Array(rest.prefix(size)))
        rest = rest.dropFirst(size)
    }
    return outcomes
}

/// Workload deltas, and the reference model holding all of them.
func workloadWithReference(seed: UInt64, customers: Int, count: Int) -> ([ProfileDelta], ProfileState) {
    let deltas = WorkloadGenerator.deltas(seed: seed, customers: customers, count: count)
    var reference = ProfileState()
    for delta in deltas { reference.apply(delta, hasher: hmac) }
    return (deltas, reference)
}

private func expectSameViews(_ store: any ProfileStore, _ reference: ProfileState, _ context: String) throws {
    for identifier in reference.identifiers.sorted() {
        let expected = reference.view(of: identifier).map { ProfileFormat.encode($0) }
        let actual = try store.view(of: identifier).map { ProfileFormat.encode($0) }
        // What reads render: the same row, checked in place.
        let rendered = try store.encodedView(of: identifier)?.bytes
        if actual != expected || rendered != expected {
            // Report which profile differs, not the bytes (they would drown the log).
            Issue.record("\(context): view of \(identifier) differs (\(actual?.count ?? 0) vs \(expected?.count ?? 0) bytes)")
            return
        }
    }
}

@Suite("Profile store contract (LMDB and memory)")
struct StoreContractTests {
    @Test("a document key made from an identifier is the one made from its key, for every kind and part")
    func documentKeysAgree() {
        for kind in IdentifierKind.examples {
            for value in ["x", "user-0001234", "Zoë Ünïcode 😀", String(repeating: "long", count: 100)] {
                guard let identifier = Identifier(kind: kind, value: value) else { continue }
                for part in DocumentPart.allCases {
                    #expect(documentKey(identifier, part) == documentKey(identifier.key, part), "\(identifier) \(part)")
                }
            }
        }
    }

    @Test(arguments: StoreKind.allCases)
    func holdsExactlyWhatTheReferenceModelHolds(_ kind: StoreKind) throws {
        for seed in 0..<4 as Range<UInt64> {
            let fixture = try StoreFixture(kind)
            var random = SplitMix64(seed: seed)
            let deltas = WorkloadGenerator.deltas(seed: 200 + seed, customers: 30, count: 1_500)
            var reference = ProfileState()
            let expectedOutcomes = deltas.map { reference.apply($0, hasher: hmac) }
            let outcomes = try apply(deltas, to: fixture.store, random: &random)
            #expect(outcomes == expectedOutcomes, "\(kind) seed \(seed)")
            try expectSameViews(fixture.store, reference, "\(kind) seed \(seed)")
            let stats = try fixture.store.statistics()
            #expect(stats.profiles == reference.views.count)
            #expect(stats.identifiers == reference.identifiers.count)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func redeliveredBatchesChangeNothing(_ kind: StoreKind) throws {
        let fixture = try StoreFixture(kind)
        let deltas = WorkloadGenerator.deltas(seed: 3, customers: 10, count: 300)
        try fixture.store.apply(deltas)
        let before = try rawEntries(fixture.store).map { "\($0.table)\($0.key)\($0.value)" }
        let outcomes = try fixture.store.apply(deltas)
        #expect(outcomes.allSatisfy { $0 == .duplicate })
        #expect(try rawEntries(fixture.store).map { "\($0.table)\($0.key)\($0.value)" } == before)
        #expect(try fixture.store.hasMessage(deltas[0].messageId, subject: deltas[0].subject))
        #expect(try !fixture.store.hasMessage("never-sent", subject: deltas[0].subject))
    }

    @Test(arguments: StoreKind.allCases)
    func aBatchThatFailsAppliesNothing(_ kind: StoreKind) throws {
        // A store that runs out of room part-way through a batch: the whole batch is refused and
        // nothing of it is visible, not even the messages before the one that did not fit.
        let fixture = try StoreFixture(kind, mapSize: 2 << 20, byteLimit: 600_000)
        let small = WorkloadGenerator.deltas(seed: 4, customers: 10, count: 100)
        try fixture.store.apply(small)
        let before = try rawEntries(fixture.store).count
        let statsBefore = try fixture.store.statistics()
        var big = WorkloadGenerator.deltas(seed: 5, customers: 2_000, count: 6_000)
        let filler = String(repeating: "x", count: 2_000)
        for i in big.indices { big[i].traits.members.append(JSONObject.Member("notes", .string(filler))) }
        #expect(throws: (any Error).self) { try fixture.store.apply(big) }
        #expect(try rawEntries(fixture.store).count == before)
        #expect(try fixture.store.statistics() == statsBefore)
        #expect(try !fixture.store.hasMessage(big[0].messageId, subject: big[0].subject))
        try fixture.store.apply(Array(big.prefix(3)))  // the store still works afterwards
    }

    /// Clients send both ids on a track once they know the user, so an event can link two
    /// people: the profile rebuilt around the new link must keep that event among its newest
    /// (the rebuild takes the old profiles' newest events and adds the message's own).
    @Test(arguments: StoreKind.allCases)
    func eventsThatLinkPeopleMatchTheReferenceModel(_ kind: StoreKind) throws {
        for seed in 0..<3 as Range<UInt64> {
            let fixture = try StoreFixture(kind)
            var random = SplitMix64(seed: 40 + seed)
            let parser = SegmentMessageParser()
            var deltas: [ProfileDelta] = []
            for index in 0..<400 {
                let time = 1_760_000_000_000 + Int64(random.below(100_000))
                var message: [String: JSONValue] = [
                    "type": "track", "event": .string(["Viewed", "Added", "Bought"][random.below(3)]), "messageId": .string("m-\(index)"),
                    "timestamp": .string(ISO8601.format(millis: time)),
                ]
                if random.below(3) > 0 { message["userId"] = .string("u-\(random.below(6))") }
                if message["userId"] == nil || random.below(2) == 0 { message["anonymousId"] = .string("a-\(random.below(15))") }
                let object = JSONObject(message.keys.sorted().map { JSONObject.Member($0, message[$0]!) })
                deltas.append(try parser.parse(.object(object), receivedAt: 1_760_000_100_000))
            }
            var reference = ProfileState()
            for delta in deltas { reference.apply(delta, hasher: hmac) }
            _ = try apply(deltas, to: fixture.store, random: &random)
            try expectSameViews(fixture.store, reference, "\(kind) seed \(seed)")
        }
    }

    @Test(arguments: StoreKind.allCases)
    func unmergeMatchesTheReferenceModel(_ kind: StoreKind) throws {
        let fixture = try StoreFixture(kind)
        var random = SplitMix64(seed: 8)
        var (deltas, reference) = workloadWithReference(seed: 9, customers: 8, count: 600)
        _ = try apply(deltas, to: fixture.store, random: &random)
        let links = reference.graph.sortedKeys
        for (i, edge) in links.enumerated() where i % 3 == 0 {
            let stamp = LWWStamp(time: 1_760_000_000_000 + Int64(random.below(40_000)), tiebreak: "unmerge-\(i)")
            reference.removeLink(edge.low, edge.high, stamp: stamp, hasher: hmac)
            try fixture.store.removeLink(edge.high, edge.low, stamp: stamp)
        }
        try expectSameViews(fixture.store, reference, "\(kind) after unmerges")
        // More messages after the unmerges still agree.
        let more = WorkloadGenerator.deltas(seed: 10, customers: 8, count: 300)
        for delta in more { reference.apply(delta, hasher: hmac) }
        _ = try apply(more, to: fixture.store, random: &random)
        try expectSameViews(fixture.store, reference, "\(kind) after more messages")
    }

    @Test(arguments: StoreKind.allCases)
    func erasureLeavesOnlyForgetEntries(_ kind: StoreKind) throws {
        let fixture = try StoreFixture(kind)
        var (deltas, reference) = workloadWithReference(seed: 11, customers: 6, count: 500)
        try fixture.store.apply(deltas)
        let target = Identifier(kind: .userId, value: "u-0")!
        let erasedAt: Int64 = 1_760_000_010_000
        let members = try fixture.store.erase(target, requestedAt: erasedAt).members
        #expect(members == reference.erase(target, at: erasedAt, hasher: hmac))
        #expect(members.count >= 2)
        try expectSameViews(fixture.store, reference, "\(kind) after erasure")
        #expect(try fixture.store.view(of: target) == nil)

        // Physically: no table holds an erased identifier in a key or a value; the forget table
        // holds one keyed hash per member; the change log names none of them.
        let entries = try rawEntries(fixture.store)
        for member in members {
            let needle = Array(member.value.utf8)
            let holding = entries.filter { contains($0.key, needle) || contains($0.value, needle) }
            #expect(holding.isEmpty, "\(kind): \(member) still in \(holding.map(\.table))")
        }
        #expect(entries.filter { $0.table == .forget }.count == members.count)
        #expect(
            entries.filter { $0.table == .forget }.map(\.key).sorted { $0.lexicographicallyPrecedes($1) }
                == members.map { hmac.forgetKeyBytes(for: $0) }.sorted { $0.lexicographicallyPrecedes($1) })

        // Old copies are dropped; genuinely new data starts a new profile.
        let retried = try fixture.store.apply(deltas.filter { members.contains($0.subject) })
        #expect(retried.allSatisfy { $0 == .forgotten })
        var fresh = deltas.first { $0.subject == target }!
        fresh.messageId = "after-erasure"
        fresh.times = MessageTimes(timestamp: erasedAt + 60_000, originalTimestamp: nil, sentAt: nil, receivedAt: erasedAt + 60_000)
        fresh.event?.time = fresh.times.eventTime
        #expect(try fixture.store.apply([fresh]) == [.applied])
        #expect(try fixture.store.view(of: target)?.head.messageCount == 1)
    }

    @Test(arguments: StoreKind.allCases)
    func theChangeLogRecordsEveryAppliedDeltaInOrder(_ kind: StoreKind) throws {
        let fixture = try StoreFixture(kind)
        let deltas = WorkloadGenerator.deltas(seed: 12, customers: 10, count: 400)
        // Random batch sizes: pages of the log start and end inside and across batch records.
        var random = SplitMix64(seed: 15)
        let outcomes = try apply(deltas, to: fixture.store, random: &random)
        let applied = zip(deltas, outcomes).filter { $0.1 == .applied }.map(\.0)
        var logged: [ChangeEntry] = []
        var position: UInt64 = 0
        while true {
            let page = try fixture.store.changes(after: position, limit: 64)
            guard let last = page.last else { break }
            logged += page
            position = last.sequence
        }
        #expect(logged.map(\.sequence) == Array(1...UInt64(applied.count)))
        #expect(logged.allSatisfy { $0.origin == 1 && $0.originSequence == $0.sequence })
        #expect(logged.map(\.change) == applied.map { .message($0) })
        #expect(try fixture.store.statistics().lastSequence == UInt64(applied.count))
    }

    @Test(arguments: StoreKind.allCases)
    func eventPagesCoverTheWholeHistoryNewestFirst(_ kind: StoreKind) throws {
        let fixture = try StoreFixture(kind)
        let (deltas, reference) = workloadWithReference(seed: 16, customers: 5, count: 400)
        try fixture.store.apply(deltas)
        for view in reference.views {
            let expected = view.members.flatMap { member in
                (reference.documents[member]?.ledger ?? [:]).filter { $0.value.type.isEvent }.map { (time: $0.value.time, id: $0.key) }
            }.sorted { ($0.time, $0.id) > ($1.time, $1.id) }.map(\.id)
            var seen: [String] = []
            var cursor: EventCursor?
            repeat {
                let page = try fixture.store.events(of: view.canonical, before: cursor, limit: 7)
                seen += page.events.map(\.messageId)
                cursor = page.next
                #expect(page.events.count <= 7)
            } while cursor != nil
            #expect(seen == expected, "\(kind): events of \(view.canonical)")
            if let first = cursor { #expect(EventCursor(token: first.token) == first) }
        }
        #expect(EventCursor(token: EventCursor(time: -5, messageId: "m-é/1").token) == EventCursor(time: -5, messageId: "m-é/1"))
        #expect(EventCursor(token: "nonsense") == nil)
        let links = try fixture.store.links(of: reference.views[0].canonical)
        #expect(links.filter(\.active).count >= reference.views[0].members.count - 1)
    }

    @Test(arguments: StoreKind.allCases)
    func readsByAnyIdentifierReturnTheCanonicalProfile(_ kind: StoreKind) throws {
        let fixture = try StoreFixture(kind)
        let parser = SegmentMessageParser()
        let messages = [
            #"{"type":"track","anonymousId":"a-1","event":"Product Viewed","messageId":"m1","timestamp":"2025-01-01T00:00:00Z"}"#,
            #"{"type":"alias","previousId":"a-1","userId":"u-1","messageId":"m2","timestamp":"2025-01-01T00:00:01Z"}"#,
            #"{"type":"identify","userId":"u-1","traits":{"email":"x@example.com"},"messageId":"m3","timestamp":"2025-01-01T00:00:02Z"}"#,
        ]
        try fixture.store.apply(messages.map { try parser.parse(try JSONParser.parse($0), receivedAt: 0) })
        for text in ["user_id:u-1", "anonymous_id:a-1", "email:x@example.com"] {
            let view = try fixture.store.view(of: Identifier(parsing: text)!)
            #expect(view?.canonical == Identifier(parsing: "user_id:u-1"))
            #expect(view?.members.count == 3)
            #expect(view?.head.aggregates["Product Viewed"]?.count == 1)
            #expect(try fixture.store.encodedView(of: Identifier(parsing: text)!)?.jsonBytes == view?.jsonBytes)
        }
        #expect(try fixture.store.view(of: Identifier(parsing: "user_id:nobody")!) == nil)
        #expect(try fixture.store.encodedView(of: Identifier(parsing: "user_id:nobody")!) == nil)
    }
}

@Suite("LMDB store")
struct LMDBStoreTests {
    @Test func dataSurvivesReopeningAndBackups() throws {
        let fixture = try StoreFixture(.lmdb)
        let (deltas, reference) = workloadWithReference(seed: 13, customers: 20, count: 800)
        try fixture.store.apply(deltas)
        let backupPath = fixture.path + "-backup"
        defer { try? FileManager.default.removeItem(atPath: backupPath) }
        try (fixture.store as! LMDBProfileStore).backup(to: backupPath)
        try fixture.reopen()
        try expectSameViews(fixture.store, reference, "reopened")
        let statistics = try fixture.store.statistics()
        // A backup is opened with the store's key file, which one store at a time may hold.
        fixture.close()
        let restored = try LMDBProfileStore(path: backupPath, configuration: configuration, keyFile: fixture.path + ".keys")
        try expectSameViews(restored, reference, "restored backup")
        #expect(try restored.statistics() == statistics)
    }

    @Test func readersSeeConsistentProfilesWhileBatchesCommit() throws {
        let fixture = try StoreFixture(.lmdb)
        let store = fixture.store
        let deltas = WorkloadGenerator.deltas(seed: 14, customers: 20, count: 3_000)
        let failures = Counter()
        let done = DispatchSemaphore(value: 0)
        let stop = Counter()
        Thread {
            while stop.value == 0 {
                for c in 0..<20 {
                    do {
                        if let view = try store.view(of: Identifier(kind: .userId, value: "u-\(c)")!) {
                            if view.head.messageCount < Int64(view.head.aggregates.values.reduce(0) { $0 + $1.count }) { failures.add() }
                        }
                    } catch { failures.add() }
                }
            }
            done.signal()
        }.start()
        for start in stride(from: 0, to: deltas.count, by: 100) {
            try store.apply(Array(deltas[start..<min(start + 100, deltas.count)]))
        }
        stop.add()
        done.wait()
        #expect(failures.value == 0)
    }

    @Test func refusesAStoreWrittenInAnUnknownFormat() throws {
        let fixture = try StoreFixture(.lmdb)
        try (fixture.store as! LMDBProfileStore).write { txn in try txn.put(.meta, Array("format".utf8), [99], mode: .upsert) }
        #expect(throws: StoreCorruption.self) { try fixture.reopen() }
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    var value: Int { lock.withLock { count } }
    func add() { lock.withLock { count += 1 } }
}

func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard needle.count <= haystack.count else { return false }
    for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
        if haystack[start..<start + needle.count].elementsEqual(needle) { return true }
    }
    return false
}
