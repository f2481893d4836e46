import Foundation
import KithCRDT
import KithCompression
import KithJSON
import KithLMDB
import KithProfile
import Testing

@testable import KithStore
@testable import KithStoreLMDB

@Suite("Identifier rows")
struct IdentifierRowTests {
    let owner = Identifier(kind: .userId, value: "user-1")!.key

    @Test func aRowReadsBackWhatWasSet() throws {
        var row = IdentifierRow(owner: owner)
        let existed = [
            row.set(DocumentPart.view.rawValue, [], [3, 3]), row.set(DocumentPart.index.rawValue, [], [1]),
            row.set(DocumentPart.view.rawValue, [], [3]),
        ]
        #expect(existed == [false, false, true])
        #expect(try IdentifierRow(decoding: row.encoded()) == row)
        #expect(row.records.map(\.part) == [DocumentPart.index.rawValue, DocumentPart.view.rawValue])
        #expect(row.record(DocumentPart.view.rawValue) == [3] && row.record(DocumentPart.head.rawValue) == nil)
        for part in DocumentPart.allCases.map(\.rawValue) where IdentifierRow.holds(part) {
            #expect(try IdentifierRow.record(part, in: row.encoded()) == row.record(part), "part \(part) read where it lies")
        }
        #expect(try IdentifierRow.record(DocumentPart.view.rawValue, in: owner) == nil, "a layout-1 owner row holds no records")
        let removed = [row.set(DocumentPart.index.rawValue, [], nil), row.set(DocumentPart.index.rawValue, [], nil)]
        #expect(removed == [true, false])
        row.set(DocumentPart.view.rawValue, [], nil)
        let decoded = try IdentifierRow(decoding: row.encoded())
        #expect(row.isEmpty && decoded == row)
    }

    /// A row the sweep deflated reads as the row it was; a short one, or one deflated already,
    /// is left as it is.
    @Test func aDeflatedRowReadsAsTheRowItWas() throws {
        var row = IdentifierRow(owner: owner)
        row.set(DocumentPart.head.rawValue, [], Array("traits plan gold city Oslo email".utf8))
        row.set(DocumentPart.view.rawValue, [], Array(repeating: Array("Order Completed revenue ".utf8), count: 6).flatMap { $0 })
        row.set(DocumentPart.edge.rawValue, Identifier(kind: .anonymousId, value: "anon-1")!.key, [1, 2, 3])
        let plain = row.encoded()
        let deflated = try #require(IdentifierRow.deflated(plain))
        #expect(deflated.count < plain.count / 2 && IdentifierRow.isDeflated(deflated) && !IdentifierRow.isDeflated(plain))
        #expect(try IdentifierRow(decoding: deflated) == row)
        for part in [DocumentPart.index, .head, .view].map(\.rawValue) {
            #expect(try IdentifierRow.record(part, in: deflated) == row.record(part))
        }
        #expect(IdentifierRow.deflated(deflated) == nil && IdentifierRow.deflated(IdentifierRow(owner: owner).encoded()) == nil)
        var cut = deflated
        cut.removeLast(3)
        #expect(throws: (any Error).self) { try IdentifierRow(decoding: cut) }
    }

    /// The sweep stores identifier rows deflated, every record as it was; the next write of an
    /// identifier stores its row plain again.
    @Test func theSweepDeflatesIdentifierRowsAndIngestWritesThemPlain() throws {
        try Self.withFixtureStore { store in
            let before = try rawEntries(store).filter { $0.table == .documents }
            #expect(try Self.deflatedRows(store) == 0)
            var step: RetentionStep
            var deflated = 0
            repeat {
                step = try store.expire(under: .none, now: 0, buckets: 64)
                deflated += step.rowsDeflated
            } while !step.passEnded
            let stored = try Self.deflatedRows(store)
            #expect(deflated > 3 && deflated == stored)
            let after = try rawEntries(store).filter { $0.table == .documents }
            #expect(after.count == before.count && zip(after, before).allSatisfy { $0.key == $1.key && $0.value == $1.value })
            let user = Identifier(kind: .userId, value: "user-1")!
            let view = try store.view(of: user)
            #expect(view?.members.count == 4)
            let message = #"{"type":"identify","messageId":"m-13","userId":"user-1","timestamp":"2025-10-04T10:00:00Z","traits":{"plan":"platinum"}}"#
            _ = try store.apply([try SegmentMessageParser().parse(JSONParser.parse(Array(message.utf8)), receivedAt: 1_759_312_800_000)])
            let storedAfterWrite = try Self.deflatedRows(store)
            #expect(storedAfterWrite < deflated, "the written identifier's row is plain again")
            #expect(try store.view(of: user)?.head.traits["plan"] != nil)
        }
    }

    /// A row the sweep's transaction changed (a sweep that dropped some of its data) is stored
    /// deflated when it is sealed at commit; read back, it is what was written.
    @Test func aRowChangedInTheSweepsTransactionIsStoredDeflated() throws {
        let path = SealingTests.directory()
        defer { SealingTests.remove(path) }
        let store = try SealingTests.open(path)
        let owner = Identifier(kind: .userId, value: "user-9")!
        let head = Array(repeating: Array("Order Completed revenue currency ".utf8), count: 8).flatMap { $0 }
        let deflated = try store.write { writer in
            try writer.put(.documents, documentKey(owner.key, .head), head, mode: .upsert)
            return try writer.deflateIdentifierRow(of: owner.key)
        }
        #expect(deflated)
        #expect(try Self.deflatedRows(store) == 1)
        #expect(try store.read { try $0.get(.documents, documentKey(owner.key, .head)) } == head)
    }

    /// Identifier rows stored deflated.
    static func deflatedRows(_ store: LMDBProfileStore) throws -> Int {
        try store.environment.read { txn in
            let session = SealingSession(store.sealing, writing: false)
            var count = 0
            try LMDBReading(reader: txn, tables: store.tables).scan(.documents, from: []) { key, value in
                guard key.count == Sealing.pseudonymSize + 1, key[Sealing.pseudonymSize] == Sealing.ownerPart,
                    let plain = try session.openIdentifierRow(value, rowKey: key)
                else { return .next }
                count += IdentifierRow.isDeflated(plain) ? 1 : 0
                return .next
            }
            return count
        }
    }

    /// A layout-1 owner row is the identifier key alone: it reads as a row without records.
    @Test func aLayoutOneOwnerRowReadsAsARowWithoutRecords() throws {
        #expect(try IdentifierRow(decoding: owner) == IdentifierRow(owner: owner))
    }

    @Test func damagedRowsAreRefused() throws {
        var row = IdentifierRow(owner: owner)
        row.set(DocumentPart.head.rawValue, [], [2])
        row.set(DocumentPart.view.rawValue, [], [3])
        let bytes = row.encoded()
        var swapped = bytes
        let headAt = try #require(bytes.firstIndex(of: DocumentPart.head.rawValue))
        swapped[headAt] = DocumentPart.view.rawValue
        #expect(throws: BinaryDecodingError.self) { try IdentifierRow(decoding: swapped) }
        #expect(throws: BinaryDecodingError.self) { try IdentifierRow.record(DocumentPart.view.rawValue, in: Array(bytes.dropLast())) }
        var unknown = bytes
        unknown[headAt] = DocumentPart.ledger.rawValue + 1
        #expect(throws: BinaryDecodingError.self) { try IdentifierRow(decoding: unknown) }
        // A point read stops at its record: it checks what lies before it (the seal vouches for the rest).
        #expect(throws: BinaryDecodingError.self) { try IdentifierRow.record(DocumentPart.view.rawValue, in: unknown) }
        var ledgerFirst = bytes
        ledgerFirst[headAt] = DocumentPart.ledger.rawValue
        #expect(throws: BinaryDecodingError.self, "a ledger tail before the view") { try IdentifierRow(decoding: ledgerFirst) }
        #expect(throws: BinaryDecodingError.self) { try IdentifierRow(decoding: Array(bytes.dropLast())) }
        #expect(throws: BinaryDecodingError.self) { try IdentifierRow(decoding: []) }
    }

    /// On disk an identifier's index, head and view are in its owner row: no row of their own.
    @Test func indexHeadAndViewHaveNoRowsOfTheirOwn() throws {
        try Self.withFixtureStore { store in
            let user = Identifier(kind: .userId, value: "user-1")!
            #expect(try store.view(of: user) != nil)
            let parts = try Self.storedParts(store)
            #expect(parts[DocumentPart.index.rawValue] == nil && parts[DocumentPart.head.rawValue] == nil && parts[DocumentPart.view.rawValue] == nil)
            let engineParts = try Self.engineParts(store)
            #expect(engineParts[DocumentPart.index.rawValue] == parts[Sealing.ownerPart], "every identifier has an index, in its owner row")
            #expect((engineParts[DocumentPart.view.rawValue] ?? 0) > 0 && (engineParts[DocumentPart.head.rawValue] ?? 0) > 0)
        }
    }

    /// A scan that starts between an identifier's parts sees only what sorts after its start.
    @Test func aScanFromWithinAnIdentifierRowStartsThere() throws {
        try Self.withFixtureStore { store in
            let user = Identifier(kind: .userId, value: "user-1")!
            func firstParts(_ start: [UInt8]) throws -> [UInt8] {
                try store.read { reader in
                    var parts: [UInt8] = []
                    try reader.scan(.documents, from: start) { key, _ in
                        guard let row = RowKey(key), row.owner.elementsEqual(user.key) else { return .stop }
                        parts.append(row.partByte)
                        return parts.count < 3 ? .next : .stop
                    }
                    return parts
                }
            }
            let index = DocumentPart.index.rawValue, head = DocumentPart.head.rawValue, view = DocumentPart.view.rawValue
            let edge = DocumentPart.edge.rawValue
            let (fromPrefix, fromHead) = (try firstParts(documentPrefix(user.key)), try firstParts(documentKey(user.key, .head)))
            let (afterHead, fromEdges) = (try firstParts(documentKey(user.key, .head) + [0]), try firstParts(documentKey(user.key, .edge)))
            #expect(fromPrefix == [index, head, view])
            #expect(fromHead == [head, view, edge])
            #expect(afterHead == [view, edge, edge])
            #expect(fromEdges.allSatisfy { $0 == edge })
        }
    }

    /// The first `inlineEdgeLimit` edges of an identifier go in its identifier row, the rest in
    /// rows of their own; reads, scans, updates and deletes find each where it is, an edge
    /// stored alone stays alone, and a new edge takes a place an inline one left.
    @Test func edgesPastTheLimitAreRowsOfTheirOwn() throws {
        let path = SealingTests.directory()
        defer { SealingTests.remove(path) }
        let store = try SealingTests.open(path)
        let owner = Identifier(kind: .userId, value: "hub")!
        let limit = IdentifierRow.inlineEdgeLimit
        let peers = (0..<(limit + 3)).map { Identifier(kind: .anonymousId, value: "device-\($0)")!.key }
        let edge = { (peer: [UInt8]) in documentKey(owner.key, .edge, peer) }
        try store.write { writer in
            try writer.put(.documents, documentKey(owner.key, .head), [2], mode: .upsert)
            for (number, peer) in peers.enumerated() { try writer.put(.documents, edge(peer), [UInt8(number)], mode: .upsert) }
        }
        let edges = {
            try store.read { reader in
                var found: [[UInt8]: [UInt8]] = [:]
                try reader.scan(.documents, prefix: documentKey(owner.key, .edge)) { key, value in
                    found[Array(RowKey(stored: key).suffix)] = value
                    return .next
                }
                return found
            }
        }
        #expect(try Self.storedParts(store)[DocumentPart.edge.rawValue] == 3)
        #expect(try edges() == Dictionary(uniqueKeysWithValues: peers.enumerated().map { ($0.element, [UInt8($0.offset)]) }))
        for (number, peer) in peers.enumerated() { #expect(try store.read { try $0.get(.documents, edge(peer)) } == [UInt8(number)]) }
        // One inline and one separate edge go; the separate ones are rewritten, and a new edge takes the freed place.
        let newcomer = Identifier(kind: .anonymousId, value: "device-new")!.key
        try store.write { writer in
            #expect(try writer.delete(.documents, edge(peers[0])) && writer.delete(.documents, edge(peers[limit])))
            #expect(try !writer.delete(.documents, edge(peers[0])))
            for peer in peers[(limit + 1)...] { try writer.put(.documents, edge(peer), [99], mode: .upsert) }
            try writer.put(.documents, edge(newcomer), [7], mode: .upsert)
        }
        #expect(try Self.storedParts(store)[DocumentPart.edge.rawValue] == 2)
        var expected = Dictionary(uniqueKeysWithValues: peers.enumerated().map { ($0.element, [UInt8($0.offset)]) })
        expected[peers[0]] = nil
        expected[peers[limit]] = nil
        for peer in peers[(limit + 1)...] { expected[peer] = [99] }
        expected[newcomer] = [7]
        #expect(try edges() == expected)
        #expect(try store.read { try $0.get(.documents, documentKey(owner.key, .head)) } == [2])
    }

    /// A scan from just after a record goes on with every record after it, across owners:
    /// what paging by a cursor (the export's, after a profile's view) relies on. Both layers
    /// that read records out of a row skipped what sorted before the start in other owners too.
    @Test func aScanFromAfterAnyRecordSeesEveryRecordAfterIt() throws {
        try Self.withFixtureStore { store in
            let all = try Self.engineKeys(store)
            #expect(all.count > 30)
            for (position, key) in all.enumerated() {
                let after = try Self.engineKeys(store, from: key + [0])
                let expected = Array(all[(position + 1)...])
                let differsAt = zip(after, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(after.count, expected.count)
                #expect(
                    after == expected,
                    "after row \(position) (part \(RowKey(stored: key).partByte)): \(after.count) rows against \(expected.count), first differing at \(differsAt): \(after.dropFirst(differsAt).first.map { RowKey(stored: $0).partByte } ?? 0) vs \(expected.dropFirst(differsAt).first.map { RowKey(stored: $0).partByte } ?? 0)"
                )
            }
        }
    }

    /// A store of sealed layout 1, written by `c1ce36b` from `layoutOneFixtureMessages` and an
    /// erasure, opens as layout 3 holding what a store written now from the same input holds.
    @Test func aLayoutOneStoreMovesOnOpen() throws {
        let (path, fresh) = (try Self.unpackFixture(), SealingTests.directory())
        defer { SealingTests.remove(path, fresh) }
        do {
            let moved = try SealingTests.open(path, keyFile: path + ".keys")
            #expect(moved.identifiersMovedOnOpen == 8)
            try Self.expectSameAsWrittenNow(moved, fresh: fresh)
        }
        #expect(try SealingTests.open(path, keyFile: path + ".keys").identifiersMovedOnOpen == 0)
    }

    /// A move stopped after its first transaction goes on at the next open.
    @Test func aMoveStoppedHalfwayGoesOnAtTheNextOpen() throws {
        let (path, fresh) = (try Self.unpackFixture(), SealingTests.directory())
        defer { SealingTests.remove(path, fresh) }
        do {
            let environment = try LMDBEnvironment(path: path)
            let tables = try LMDBTables(environment: environment)
            let sealing = Sealing(keys: try DataKeyStore(path: path + ".keys"), hasher: StoreEngine(configuration: configuration).hasher)
            let moved = try LMDBProfileStore.moveToIdentifierRows(
                environment: environment, tables: tables, sealing: sealing, ownersPerTransaction: 3, transactionLimit: 1)
            #expect(moved == 3)
            let layout = try environment.read { try LMDBReading(reader: $0, tables: tables).get(.meta, sealedLayoutMetaKey) }
            #expect(layout == [LMDBProfileStore.separateRowsLayout])
        }
        let store = try SealingTests.open(path, keyFile: path + ".keys")
        #expect(store.identifiersMovedOnOpen == 5)
        try Self.expectSameAsWrittenNow(store, fresh: fresh)
    }

    /// A store of sealed layout 2 gets its identifier rows' header checks at open, a stop in
    /// between taken up at the next open; then it holds what a store written now holds.
    @Test func aLayoutTwoStoreIsCheckedOnOpen() throws {
        let (path, fresh) = (try Self.unpackFixture(), SealingTests.directory())
        defer { SealingTests.remove(path, fresh) }
        let rows: Int
        do {
            let environment = try LMDBEnvironment(path: path)
            let tables = try LMDBTables(environment: environment)
            let sealing = Sealing(keys: try DataKeyStore(path: path + ".keys"), hasher: StoreEngine(configuration: configuration).hasher)
            #expect(try LMDBProfileStore.moveToIdentifierRows(environment: environment, tables: tables, sealing: sealing) == 8)
            rows = try Self.storedParts(environment: environment, tables: tables)[Sealing.ownerPart] ?? 0
            try LMDBProfileStore.startIdentifierRowChecks(environment: environment, tables: tables)
            let checked = try LMDBProfileStore.checkIdentifierRows(
                environment: environment, tables: tables, rowsPerTransaction: 3, transactionLimit: 1)
            #expect(checked == 3 && rows > 6)
        }
        do {
            let store = try SealingTests.open(path, keyFile: path + ".keys")
            #expect(store.identifiersMovedOnOpen == 0 && store.identifierRowsCheckedOnOpen == rows - 3)
            try Self.expectSameAsWrittenNow(store, fresh: fresh)
        }
        #expect(try SealingTests.open(path, keyFile: path + ".keys").identifierRowsCheckedOnOpen == 0)
    }

    /// An identifier's ledger tail is kept in its identifier row while it is at most
    /// `inlineLedgerTailLimit` bytes, as a row of its own past that, and back in the row once
    /// short again; reads, scans (in key order, the tail after the owner's other blocks) and
    /// deletes find each row where it is.
    @Test func aShortLedgerTailIsKeptInTheIdentifierRow() throws {
        let path = SealingTests.directory()
        defer { SealingTests.remove(path) }
        let store = try SealingTests.open(path)
        let owner = Identifier(kind: .userId, value: "buyer")!
        let pseudonym = Array(store.engine.hasher.forgetKeyBytes(for: owner).prefix(Sealing.pseudonymSize))
        let rowKey = pseudonym + [Sealing.ownerPart]
        let tailKey = pseudonym + [DocumentPart.ledger.rawValue] + LedgerBlock.tailSuffix
        let messageIds = (1...6).map { "m-0\($0)" }
        let moreIds = (10...17).map { "m-\($0)" }
        let ledger = { (messageId: String) in documentKey(owner.key, .ledger, Array(messageId.utf8)) }
        let value = { (messageId: String) in Array(repeating: UInt8(messageId.utf8.last!), count: 100) }
        func rows(from start: [UInt8] = documentKey(owner.key, .ledger)) throws -> [[UInt8]: [UInt8]] {
            try store.read { reader in
                var found: [[UInt8]: [UInt8]] = [:]
                var previous: [UInt8]?
                try reader.scan(.documents, from: start) { key, value in
                    guard key.starts(with: documentKey(owner.key, .ledger)) else { return found.isEmpty ? .next : .stop }
                    #expect(previous.map { $0.lexicographicallyPrecedes(key) } ?? true, "rows in key order")
                    previous = key
                    found[key] = value
                    return .next
                }
                return found
            }
        }
        func expected(_ ids: ArraySlice<String>) -> [[UInt8]: [UInt8]] { Dictionary(uniqueKeysWithValues: ids.map { (ledger($0), value($0)) }) }
        try store.write { writer in
            try writer.put(.documents, documentKey(owner.key, .head), [2], mode: .upsert)
            for id in messageIds[..<3] { try writer.put(.documents, ledger(id), value(id), mode: .upsert) }
        }
        #expect(try Self.storedRows(store, of: pseudonym) == [rowKey])
        #expect(try rows() == expected(messageIds[..<3]))
        // A block inserted only where none is: the row's tail stays, long or short the new one.
        let plainTailKey = documentKey(owner.key, .ledger) + LedgerBlock.tailSuffix
        let inserted = try store.write { writer in
            let sealed = try #require(writer as? LedgerBlockWriting).base
            return [
                try sealed.put(.documents, plainTailKey, [UInt8](repeating: 7, count: 600), mode: .insertOnly),
                try sealed.put(.documents, plainTailKey, [7], mode: .insertOnly),
            ]
        }
        #expect(inserted == [false, false])
        #expect(try Self.storedRows(store, of: pseudonym) == [rowKey])
        #expect(try rows() == expected(messageIds[..<3]))
        try store.write { writer in
            for id in messageIds[3...] { try writer.put(.documents, ledger(id), value(id), mode: .upsert) }
        }
        #expect(try Self.storedRows(store, of: pseudonym) == [rowKey, tailKey], "a long tail is a row of its own")
        #expect(try rows() == expected(messageIds[...]))
        #expect(try rows(from: ledger("m-03")) == expected(messageIds[2...]))
        for id in messageIds { #expect(try store.read { try $0.get(.documents, ledger(id)) } == value(id)) }
        let deleted = try store.write { writer in try messageIds[3...].map { try writer.delete(.documents, ledger($0)) } }
        #expect(deleted == [true, true, true])
        #expect(try Self.storedRows(store, of: pseudonym) == [rowKey], "short again, the tail is back in the row")
        #expect(try rows() == expected(messageIds[..<3]))
        #expect(try rows(from: ledger("m-02") + [0]) == expected(messageIds[2..<3]))
        // Rows appended past a block's size cut blocks off the tail, which is short again:
        // blocks of their own, then the tail in the row, given after them.
        try store.write { writer in
            for id in moreIds { try writer.put(.documents, ledger(id), value(id), mode: .upsert) }
        }
        let stored = try Self.storedRows(store, of: pseudonym)
        #expect(stored.first == rowKey && stored.count > 1 && !stored.contains(tailKey), "\(stored.count) rows")
        #expect(try rows() == expected(messageIds[..<3] + moreIds[...]))
        #expect(try rows(from: ledger("m-15")) == expected(moreIds[5...]))
        #expect(try rows(from: documentPrefix(owner.key)) == expected(messageIds[..<3] + moreIds[...]), "from the identifier row")
        #expect(try rows(from: []) == expected(messageIds[..<3] + moreIds[...]), "from the table's start")
        try store.write { writer in
            for id in moreIds { try writer.delete(.documents, ledger(id)) }
        }
        #expect(try rows() == expected(messageIds[..<3]))
        // Another owner's tail, before and after this one in the table, is given after its own blocks.
        let other = Identifier(kind: .userId, value: "other-buyer")!
        try store.write { writer in try writer.put(.documents, documentKey(other.key, .ledger, Array("x-1".utf8)), [9], mode: .upsert) }
        let all = try Self.engineKeys(store)
        for owner in [owner, other] {
            let ownerKeys = all.filter { $0.starts(with: documentPrefix(owner.key)) }
            #expect(ownerKeys == ownerKeys.sorted { $0.lexicographicallyPrecedes($1) }, "an owner's rows in key order")
        }
        let deletedAll = try store.write { writer in
            try messageIds[..<3].map { try writer.delete(.documents, ledger($0)) } + [try writer.delete(.documents, ledger("m-01"))]
        }
        #expect(deletedAll == [true, true, true, false])
        #expect(try rows().isEmpty)
        #expect(try store.read { try $0.get(.documents, documentKey(owner.key, .head)) } == [2])
    }

    /// An owner whose last row beside its identifier row goes keeps the row while it holds a
    /// record, and its data key; once its records go too, the row goes and the key is retired.
    @Test func anIdentifierRowOutlivesTheOwnersOtherRows() throws {
        let path = SealingTests.directory()
        defer { SealingTests.remove(path) }
        let store = try SealingTests.open(path)
        let owner = Identifier(kind: .userId, value: "user-9")!
        let (headKey, edgeKey) = (documentKey(owner.key, .head), documentKey(owner.key, .ledger, Array("m-9".utf8)))
        try store.write { writer in
            try writer.put(.documents, headKey, [7, 7], mode: .upsert)
            try writer.put(.documents, edgeKey, [1], mode: .upsert)
        }
        let key = try #require(try store.dataKeyID(of: owner))
        try store.write { writer in _ = try writer.delete(.documents, edgeKey) }
        #expect(try store.read { try $0.get(.documents, headKey) } == [7, 7])
        #expect(try store.dataKeyID(of: owner) == key && store.sealing.keys.key(for: key) != nil)
        try store.write { writer in _ = try writer.delete(.documents, headKey) }
        #expect(try store.read { try $0.get(.documents, headKey) } == nil)
        #expect(try store.dataKeyID(of: owner) == nil && store.sealing.keys.key(for: key) == nil, "an owner with nothing left keeps no key")
        #expect(try Self.storedParts(store).isEmpty)
    }

    /// Records changed in a transaction are read back in it, before the row is sealed at commit.
    @Test func aTransactionReadsTheRecordsItChanged() throws {
        let path = SealingTests.directory()
        defer { SealingTests.remove(path) }
        let store = try SealingTests.open(path)
        let owner = Identifier(kind: .userId, value: "user-9")!
        let (indexKey, viewKey) = (documentKey(owner.key, .index), documentKey(owner.key, .view))
        let seen = try store.write { writer in
            try writer.put(.documents, viewKey, [3], mode: .upsert)
            let inserted = try writer.put(.documents, indexKey, [1], mode: .insertOnly)
            let again = try writer.put(.documents, indexKey, [2], mode: .insertOnly)
            var scanned: [[UInt8]] = []
            try writer.scan(.documents, prefix: documentPrefix(owner.key)) { _, value in
                scanned.append(value)
                return .next
            }
            return (inserted, again, try writer.get(.documents, indexKey), scanned)
        }
        #expect(seen.0 && !seen.1 && seen.2 == [1] && seen.3 == [[1], [3]])
        #expect(try store.read { [try $0.get(.documents, indexKey), try $0.get(.documents, viewKey)] } == [[1], [3]])
    }

    /// A fresh sealed store holding the fixture's messages, removed once `body` returns.
    static func withFixtureStore(_ body: (LMDBProfileStore) throws -> Void) throws {
        let path = SealingTests.directory()
        defer { SealingTests.remove(path) }
        let store = try SealingTests.open(path)
        _ = try store.apply(try fixtureMessages())
        try body(store)
    }

    static func fixtureMessages() throws -> [ProfileDelta] {
        try layoutOneFixtureMessages.map { try SegmentMessageParser().parse(JSONParser.parse(Array($0.utf8)), receivedAt: 1_759_312_800_000) }
    }

    /// What the fixture was written from, written now into `fresh`, reads the same through the
    /// engine's eyes, table by table; and no row of a held part is left on disk.
    static func expectSameAsWrittenNow(_ store: LMDBProfileStore, fresh: String) throws {
        let written = try SealingTests.open(fresh)
        _ = try written.apply(try fixtureMessages())
        _ = try written.erase(Identifier(kind: .userId, value: "erased-user")!, requestedAt: 1_759_400_000_000)
        let (left, right) = (try rawEntries(store), try rawEntries(written))
        #expect(left.count == right.count && left.count > 40)
        for (a, b) in zip(left, right) {
            #expect(a.table == b.table && a.key == b.key && a.value == b.value, "\(a.table) \(a.key)")
        }
        let (stored, storedWritten) = (try storedParts(store), try storedParts(written))
        #expect(stored == storedWritten)
        #expect(
            try store.view(of: Identifier(kind: .userId, value: "user-1")!)?.members.map(\.value).sorted() == [
                "anon-1", "old-user-1", "one@example.com", "user-1",
            ])
        #expect(try store.view(of: Identifier(kind: .userId, value: "erased-user")!) == nil)
        let layout = try store.environment.read { try LMDBReading(reader: $0, tables: store.tables).get(.meta, sealedLayoutMetaKey) }
        #expect(layout == [LMDBProfileStore.sealedLayout])
    }

    /// Rows on disk in `documents`, by the part byte after the pseudonym.
    static func storedParts(_ store: LMDBProfileStore) throws -> [UInt8: Int] {
        try storedParts(environment: store.environment, tables: store.tables)
    }

    static func storedParts(environment: LMDBEnvironment, tables: LMDBTables) throws -> [UInt8: Int] {
        try environment.read { txn in
            var parts: [UInt8: Int] = [:]
            try LMDBReading(reader: txn, tables: tables).scan(.documents, from: []) { key, _ in
                parts[key[Sealing.pseudonymSize], default: 0] += 1
                return .next
            }
            return parts
        }
    }

    /// The keys on disk of the rows of the owner with `pseudonym`.
    static func storedRows(_ store: LMDBProfileStore, of pseudonym: [UInt8]) throws -> [[UInt8]] {
        try store.environment.read { txn in
            var keys: [[UInt8]] = []
            try LMDBReading(reader: txn, tables: store.tables).scan(.documents, from: pseudonym) { key, _ in
                guard key.starts(with: pseudonym) else { return .stop }
                keys.append(key)
                return .next
            }
            return keys
        }
    }

    /// The keys of `documents` as the engine reads them, from `start` to the end.
    static func engineKeys(_ store: LMDBProfileStore, from start: [UInt8] = []) throws -> [[UInt8]] {
        try store.read { reader in
            var keys: [[UInt8]] = []
            try reader.scan(.documents, from: start) { key, _ in
                keys.append(key)
                return .next
            }
            return keys
        }
    }

    /// Records of `documents` as the engine reads them, by part.
    static func engineParts(_ store: LMDBProfileStore) throws -> [UInt8: Int] {
        try store.read { reader in
            var parts: [UInt8: Int] = [:]
            try reader.scan(.documents, prefix: []) { key, _ in
                parts[RowKey(stored: key).partByte, default: 0] += 1
                return .next
            }
            return parts
        }
    }

    /// The fixture's store and key file, unpacked into a directory of their own.
    static func unpackFixture() throws -> String {
        let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/sealed-layout-1")
        let path = SealingTests.directory()
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        for (name, target) in [("data.mdb.gz", path + "/data.mdb"), ("store.keys.gz", path + ".keys")] {
            let packed = Array(try Data(contentsOf: fixtures.appendingPathComponent(name)))
            try Data(try Gzip.decompress(packed, limit: 1 << 20)).write(to: URL(fileURLWithPath: target))
        }
        return path
    }
}
