import Foundation
import KithCRDT
import KithCrypto
import KithJSON
import KithLMDB
import KithProfile
import Synchronization
import Testing

@testable import KithStore
@testable import KithStoreLMDB

/// Crypto-shredding, checked on the bytes on disk: docs/storage.md, "Sealing".
@Suite("Sealing and crypto-shredding")
struct SealingTests {
    static let canaries = ["canary-mail-7f3a@example.com", "Canary-City-91b2", "canary-prop-4c5d", "anon-canary-55e1", "canary-user-0a9b"]
    static let erasedAt: Int64 = 1_760_000_100_000

    /// A customer whose every kind of data carries a canary: identifiers, a trait, an event
    /// property, an alias link, consent.
    static func canaryMessages() throws -> [ProfileDelta] {
        let texts = [
            #"{"type":"identify","messageId":"c-1","userId":"canary-user-0a9b","anonymousId":"anon-canary-55e1","timestamp":"2025-10-01T10:00:00Z","traits":{"email":"canary-mail-7f3a@example.com","city":"Canary-City-91b2"},"context":{"consent":{"categoryPreferences":{"Advertising":true}}}}"#,
            #"{"type":"track","messageId":"c-2","userId":"canary-user-0a9b","event":"Order Completed","timestamp":"2025-10-01T10:05:00Z","properties":{"note":"canary-prop-4c5d","revenue":12.5}}"#,
            #"{"type":"identify","messageId":"o-1","userId":"other-user","timestamp":"2025-10-01T10:00:00Z","traits":{"city":"Oslo"}}"#,
        ]
        return try texts.map { try SegmentMessageParser().parse(JSONParser.parse(Array($0.utf8)), receivedAt: 1_759_312_800_000) }
    }

    static func directory() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("kith-seal-\(UUID().uuidString)").path
    }

    static func open(_ path: String, keyFile: String? = nil) throws -> LMDBProfileStore {
        var lmdb = LMDBEnvironment.Configuration()
        lmdb.durable = false
        return try LMDBProfileStore(path: path, configuration: configuration, keyFile: keyFile, lmdb: lmdb)
    }

    static func remove(_ paths: String...) {
        for path in paths {
            try? FileManager.default.removeItem(atPath: path)
            try? FileManager.default.removeItem(atPath: path + ".keys")
        }
    }

    static func bytes(_ path: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: path))) }

    static func canaryHits(in file: String) throws -> [String] {
        let data = try bytes(file)
        return canaries.filter { contains(data, Array($0.utf8)) }
    }

    /// A site's purge of a customer that left its scope retires their data keys as an erasure
    /// does (a backup taken before cannot be read), leaves no forget record, and keeps everyone else.
    @Test func aPurgeRetiresTheDataKeysAndLeavesNoForgetRecord() throws {
        let path = Self.directory(), backup = path + "-backup"
        defer { Self.remove(path, backup) }
        let user = Identifier(kind: .userId, value: "canary-user-0a9b")!
        var store: LMDBProfileStore? = try Self.open(path)
        _ = try store!.apply(Self.canaryMessages())
        try store!.backup(to: backup)
        let members = try #require(try store!.view(of: user)?.members)
        let keys = try members.compactMap { try store!.dataKeyID(of: $0).flatMap(store!.sealing.keys.key(for:)) }
        #expect(keys.count == 3)
        try store!.purge(members)
        #expect(try store!.view(of: user) == nil && store!.view(of: Identifier(kind: .userId, value: "other-user")!) != nil)
        for member in members { #expect(try store!.dataKeyID(of: member) == nil, "no row is left that names \(member)") }
        #expect(try rawEntries(store!).allSatisfy { $0.table != .forget }, "a purge is no erasure: no forget record")
        let logged = try store!.changes(after: 0, limit: 100).compactMap { entry -> String? in
            if case .message(let delta) = entry.change { return delta.subject.value }
            return nil
        }
        #expect(logged == ["other-user"], "the log keeps only what is about others")
        store = nil
        let keyFile = try Self.bytes(path + ".keys")
        for key in keys { #expect(!contains(keyFile, key.byteArray), "a purged customer's key is still in the key file") }
        let restored = try Self.open(backup, keyFile: path + ".keys")
        #expect(try restored.view(of: user) == nil, "the backup from before the purge cannot be read for them")
    }

    @Test(
        "no canary is ever on disk in plain text; after erasure a backup taken before it cannot be read, and the key file holds none of the erased keys"
    )
    func erasureShredsBackups() throws {
        let path = Self.directory(), backup = path + "-backup"
        defer { Self.remove(path, backup) }
        let user = Identifier(kind: .userId, value: "canary-user-0a9b")!
        var store: LMDBProfileStore? = try Self.open(path)
        _ = try store!.apply(Self.canaryMessages())
        let members = try store!.view(of: user)?.members
        #expect(members?.count == 3, "user id, anonymous id and email: \(String(describing: members))")
        try store!.backup(to: backup)
        try store!.environment.sync()
        #expect(try Self.canaryHits(in: path + "/data.mdb").isEmpty)
        #expect(try Self.canaryHits(in: backup + "/data.mdb").isEmpty)
        #expect(try Self.canaryHits(in: path + ".keys").isEmpty)

        // The backup is readable with the store's keys while they live.
        store = nil
        var restored: LMDBProfileStore? = try Self.open(backup, keyFile: path + ".keys")
        #expect(try restored!.view(of: user)?.head.traits["city"] != nil)
        restored = nil

        store = try Self.open(path)
        let erased = try #require(try store!.view(of: user)?.members)
        let erasedKeys = try erased.compactMap { try store!.dataKeyID(of: $0).flatMap(store!.sealing.keys.key(for:)) }
        #expect(erasedKeys.count == 3)
        #expect(try store!.erase(user, requestedAt: Self.erasedAt).members.count == 3)
        #expect(try store!.view(of: user) == nil)
        #expect(try store!.view(of: Identifier(kind: .userId, value: "other-user")!) != nil)
        for member in erased { #expect(try store!.dataKeyID(of: member) == nil, "no row is left that names \(member)") }
        store = nil

        let keyFile = try Self.bytes(path + ".keys")
        for key in erasedKeys { #expect(!contains(keyFile, key.byteArray), "an erased customer's key is still in the key file") }
        #expect(try Self.canaryHits(in: path + "/data.mdb").isEmpty)
        #expect(try Self.canaryHits(in: backup + "/data.mdb").isEmpty)

        // The backup from before the erasure still holds the sealed rows, but nothing opens them.
        restored = try Self.open(backup, keyFile: path + ".keys")
        #expect(try restored!.view(of: user) == nil)
        #expect(try restored!.view(of: Identifier(kind: .anonymousId, value: "anon-canary-55e1")!) == nil)
        #expect(try restored!.view(of: Identifier(kind: .userId, value: "other-user")!) != nil)
        #expect(try restored!.events(of: user, before: nil, limit: 10).events.isEmpty)
        #expect(
            try restored!.changes(after: 0, limit: 100).allSatisfy { entry in
                if case .message(let delta) = entry.change { return delta.subject.value == "other-user" }
                return true
            })
    }

    @Test("a sealed row changed or cut short on disk is reported as damage by every read of it, and reads again once restored")
    func damagedRowsAreReportedAsDamage() throws {
        let path = Self.directory()
        defer { Self.remove(path) }
        let user = Identifier(kind: .userId, value: "canary-user-0a9b")!
        let store = try Self.open(path)
        _ = try store.apply(Self.canaryMessages())
        // The view is in the user's identifier row, with their index, head and ledger: the
        // user has no other row, so only the header's check tells damage from an erasure.
        let pseudonym = Array(store.engine.hasher.forgetKeyBytes(for: user).prefix(Sealing.pseudonymSize))
        let identifierRowKey = pseudonym + [Sealing.ownerPart]
        let documents = try store.environment.database(named: Table.documents.name, create: false)
        let original = try #require(try store.environment.read { try $0.get(documents, identifierRowKey) })
        #expect(try IdentifierRowTests.storedRows(store, of: pseudonym) == [identifierRowKey])
        let keyHeader = try SealingSession.keyID(original).offset
        let header = try SealingSession.identifierRowKeyID(original).offset
        #expect(header == keyHeader + SealingSession.headerCheckSize)
        func changed(_ position: Int) -> [UInt8] {
            var bytes = original
            bytes[position] ^= 0x01
            return bytes
        }
        let damaged: [(String, [UInt8])] = [
            ("nonce", changed(header)), ("body", changed(header + AESGCM.nonceSize + 3)), ("tag", changed(original.count - 1)),
            ("cut in the header", Array(original.prefix(keyHeader - 3))), ("cut in the check", Array(original.prefix(keyHeader + 2))),
            ("cut in the box", Array(original.prefix(header + 20))), ("empty", []),
            // A header that names no live key: damage, not an erasure.
            ("key slot", changed(0)), ("key tag", changed(keyHeader - 1)), ("check", changed(keyHeader + 1)),
        ]
        for (what, bytes) in damaged {
            try store.environment.write { try $0.put(documents, identifierRowKey, bytes) }
            #expect(throws: StoreCorruption.self, "\(what)") { try store.view(of: user) }
            #expect(throws: StoreCorruption.self, "\(what)") { try store.encodedView(of: user) }
        }
        try store.environment.write { try $0.put(documents, identifierRowKey, original) }
        #expect(try store.encodedView(of: user)?.decoded() == (try store.view(of: user)))
        #expect(try store.view(of: user) != nil)

        // The same for a row found by a scan (the customer's events, in ledger blocks of their
        // own once there are more than the identifier row's tail keeps).
        let more = try (3..<12).map { number in
            let text =
                #"{"type":"track","messageId":"c-\#(number)","userId":"canary-user-0a9b","event":"Product Viewed","timestamp":"2025-10-01T10:\#(10 + number):00Z","properties":{"note":"a note long enough to fill the tail \#(number)"}}"#
            return try SegmentMessageParser().parse(JSONParser.parse(Array(text.utf8)), receivedAt: 1_759_312_800_000)
        }
        _ = try store.apply(more)
        let rowsNow = try IdentifierRowTests.storedRows(store, of: pseudonym)
        #expect(rowsNow.first == identifierRowKey && rowsNow.count >= 2)
        let ledgerKey = try #require(rowsNow.last)
        #expect(ledgerKey[Sealing.pseudonymSize] == DocumentPart.ledger.rawValue)
        let ledger = try #require(try store.environment.read { try $0.get(documents, ledgerKey) })
        let events = try store.events(of: user, before: nil, limit: 20).events
        #expect(events.contains { $0.messageId == "c-2" } && events.count == 10)
        var damagedLedger = ledger
        damagedLedger[try SealingSession.keyID(ledger).offset - 1] ^= 0x01
        try store.environment.write { try $0.put(documents, ledgerKey, damagedLedger) }
        #expect(throws: StoreCorruption.self) { try store.events(of: user, before: nil, limit: 20) }
        try store.environment.write { try $0.put(documents, ledgerKey, ledger) }
        #expect(try store.events(of: user, before: nil, limit: 20).events == events)
    }

    @Test("keys an erasure retired are destroyed at the next open if the process stopped before")
    func retiredKeysAreDestroyedAtOpen() throws {
        let path = Self.directory()
        defer { Self.remove(path) }
        let user = Identifier(kind: .userId, value: "canary-user-0a9b")!
        var store: LMDBProfileStore? = try Self.open(path)
        _ = try store!.apply(Self.canaryMessages())
        let id = try #require(try store!.dataKeyID(of: user))
        let key = try #require(store!.sealing.keys.key(for: id))
        // What an erasure leaves in meta, as if the process had stopped before destroying.
        try store!.write { txn in try txn.put(.meta, Sealing.retiredPrefix + SealedWriting.idBytes(id), [], mode: .upsert) }
        store = nil
        store = try Self.open(path)
        #expect(store!.sealing.keys.key(for: id) == nil)
        #expect(!contains(try Self.bytes(path + ".keys"), key.byteArray))
        #expect(try store!.view(of: user) == nil)
        #expect(try store!.view(of: Identifier(kind: .userId, value: "other-user")!) != nil)
    }

    @Test("data newer than an erasure is sealed under a fresh key, and only the old keys die")
    func newerDataGetsAFreshKey() throws {
        let path = Self.directory()
        defer { Self.remove(path) }
        let user = Identifier(kind: .userId, value: "canary-user-0a9b")!
        let other = Identifier(kind: .userId, value: "other-user")!
        let store = try Self.open(path)
        _ = try store.apply(Self.canaryMessages())
        let before = try #require(try store.dataKeyID(of: user))
        let otherKey = try #require(try store.dataKeyID(of: other))
        _ = try store.erase(user, requestedAt: Self.erasedAt)
        #expect(try store.dataKeyID(of: user) == nil)
        let text = #"{"type":"identify","messageId":"c-3","userId":"canary-user-0a9b","timestamp":"2025-10-01T10:10:00Z","traits":{"plan":"new"}}"#
        var fresh = try SegmentMessageParser().parse(JSONParser.parse(Array(text.utf8)), receivedAt: Self.erasedAt + 1)
        fresh.times = MessageTimes(timestamp: Self.erasedAt + 60_000, originalTimestamp: nil, sentAt: nil, receivedAt: Self.erasedAt + 60_000)
        #expect(try store.apply([fresh]) == [.applied])
        let after = try #require(try store.dataKeyID(of: user))
        #expect(after != before && store.sealing.keys.key(for: before) == nil && store.sealing.keys.key(for: after) != nil)
        #expect(store.sealing.keys.key(for: otherKey) != nil)
        #expect(try store.view(of: user)?.head.traits["plan"] != nil)
        #expect(try store.view(of: user)?.head.traits["city"] == nil)
    }

    @Test("cipher contexts are kept between transactions, and none that may hold a destroyed key is kept after an erasure")
    func cipherContextsAreDroppedWhenKeysAreDestroyed() throws {
        let pool = CipherPool(pseudonymKey: HMACKey([UInt8](repeating: 9, count: 32)))
        let first = pool.take()
        pool.give(first.contexts, generation: first.generation)
        let again = pool.take()
        #expect(again.contexts === first.contexts && pool.spareCount == 0)
        pool.removeAll()
        pool.give(again.contexts, generation: again.generation)
        #expect(pool.spareCount == 0, "taken before the keys were destroyed: freed, not kept")
        let fresh = pool.take()
        pool.give(fresh.contexts, generation: fresh.generation)
        #expect(pool.spareCount == 1)

        let path = Self.directory()
        defer { Self.remove(path) }
        let store = try Self.open(path)
        _ = try store.apply(Self.canaryMessages())
        #expect(try store.view(of: Identifier(kind: .userId, value: "other-user")!) != nil)
        #expect(store.sealing.ciphers.spareCount > 0)
        _ = try store.erase(Identifier(kind: .userId, value: "canary-user-0a9b")!, requestedAt: Self.erasedAt)
        #expect(store.sealing.ciphers.spareCount == 0)
    }

    @Test("a store with data refuses a key file that is not there, and keeps refusing")
    func missingKeyFileIsRefused() throws {
        let path = Self.directory()
        defer { Self.remove(path) }
        var store: LMDBProfileStore? = try Self.open(path)
        _ = try store!.apply(Self.canaryMessages())
        store = nil
        try FileManager.default.removeItem(atPath: path + ".keys")
        #expect(throws: DataKeyError.self) { try Self.open(path) }
        #expect(throws: DataKeyError.self) { try Self.open(path) }
    }

    /// A key file refused at open (here: locked by another store) closes its descriptor once.
    /// A second close would close whatever file another thread had just been given that number
    /// (an LMDB environment opening in a test running beside this one failed so, with EBADF).
    /// One thread is refused the locked file over and over while another writes through a file
    /// of its own: every write must land.
    @Test("a key file refused at open closes its descriptor once")
    func refusedKeyFileClosesOnce() throws {
        let path = Self.directory(), scratch = Self.directory()
        defer { Self.remove(path, scratch) }
        let held = try DataKeyStore(path: path + ".keys")
        let stop = Mutex(false)
        let refusals = Thread {
            for _ in 0..<20_000 where !stop.withLock({ $0 }) {
                _ = try? DataKeyStore(path: path + ".keys")  // refused: the lock is held; counted below
            }
        }
        refusals.start()
        var failedWrites = 0
        let deadline = Date().addingTimeInterval(2)
        while Date() < deadline {
            let descriptor = Glibc.open(scratch, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
            #expect(descriptor >= 0)
            var byte: UInt8 = 1
            for _ in 0..<8 where write(descriptor, &byte, 1) != 1 { failedWrites += 1 }
            if close(descriptor) != 0 { failedWrites += 1 }
        }
        stop.withLock { $0 = true }
        #expect(failedWrites == 0, "\(failedWrites) writes or closes failed: a descriptor was closed under them")
        #expect(throws: DataKeyError.self) { try DataKeyStore(path: path + ".keys") }
        _ = held
    }

    @Test("two stores cannot share a key file")
    func keyFileIsLocked() throws {
        let path = Self.directory(), other = Self.directory()
        defer { Self.remove(path, other) }
        let store = try Self.open(path)
        #expect(throws: DataKeyError.self) { try Self.open(other, keyFile: path + ".keys") }
        _ = store
    }
}

@Suite("Pseudonym memo")
struct PseudonymMemoTests {
    /// A session's memo answers both ways for every pair it was given, before and after it
    /// moves from its short list to its dictionaries, and for nothing else.
    @Test(arguments: [1, 4, 5, 40])
    func answersBothWaysForEveryPair(count: Int) {
        var memo = PseudonymMemo()
        let pairs = (0..<count).map { (owner: [UInt8(1)] + Array("u-\($0)".utf8), pseudonym: [UInt8($0)] + [UInt8](repeating: 9, count: 15)) }
        for (index, pair) in pairs.enumerated() {
            memo.insert(owner: pair.owner, pseudonym: pair.pseudonym)
            memo.insert(owner: pair.owner, pseudonym: pair.pseudonym)  // learned twice (computed, then from a scan)
            for earlier in pairs[...index] {
                #expect(memo.pseudonym(of: earlier.owner) == earlier.pseudonym)
                #expect(memo.owner(of: earlier.pseudonym) == earlier.owner)
            }
        }
        #expect(memo.pseudonym(of: [1] + Array("u-none".utf8)) == nil)
        #expect(memo.owner(of: [UInt8](repeating: 255, count: 16)) == nil)
    }
}

@Suite("Data key file")
struct DataKeyStoreTests {
    @Test("keys are made a pool at a time and survive reopening; destroying overwrites the slot in place; freed slots are reused with new tags")
    func lifecycle() throws {
        let path = SealingTests.directory() + ".keys"
        defer { try? FileManager.default.removeItem(atPath: path) }
        var keys: DataKeyStore? = try DataKeyStore(path: path)
        let first = try keys!.issue(), second = try keys!.issue()
        #expect(first.id != second.id && first.key != second.key)
        #expect(keys!.key(for: first.id) == first.key)
        #expect(try SealingTests.bytes(path).count == KeySlot.headerSize + DataKeyStore.poolSize * KeySlot.size)
        keys = nil

        keys = try DataKeyStore(path: path)
        #expect(keys!.key(for: first.id) == first.key && keys!.key(for: second.id) == second.key)
        try keys!.destroy([first.id])
        #expect(keys!.key(for: first.id) == nil)
        let file = try SealingTests.bytes(path)
        #expect(!contains(file, first.key.byteArray) && contains(file, second.key.byteArray))
        #expect(keys!.key(for: DataKeyID(slot: second.id.slot, tag: second.id.tag ^ 1)) == nil, "a tag that is not the slot's names no key")
        #expect(keys!.key(for: DataKeyID(slot: 1 << 30, tag: second.id.tag)) == nil, "a slot past the file names no key")

        // After a restart every key in the file counts as issued: the next pool takes the freed
        // slot first (with a new tag), then grows the file.
        let third = try keys!.issue()
        #expect(third.id.slot == first.id.slot && third.id.tag != first.id.tag)
        #expect(keys!.key(for: first.id) == nil)
        #expect(try SealingTests.bytes(path).count == KeySlot.headerSize + (2 * DataKeyStore.poolSize - 1) * KeySlot.size)

        // That pool was written as one reused slot and a run appended at the end: both are read back.
        let fourth = try keys!.issue()
        #expect(fourth.id.slot >= UInt32(DataKeyStore.poolSize))
        keys = nil
        keys = try DataKeyStore(path: path)
        #expect(keys!.key(for: third.id) == third.key && keys!.key(for: fourth.id) == fourth.key)
    }

    @Test("keys of a transaction that did not commit go back to the pool")
    func release() throws {
        let path = SealingTests.directory() + ".keys"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let keys = try DataKeyStore(path: path)
        let first = try keys.issue()
        keys.release([first.id])
        #expect(try keys.issue().id == first.id)
    }

    @Test("the free slots a pool is made from are the lowest slots with a zero tag, after any growth, setting and freeing", arguments: 0..<20)
    func freeSlotsFollowChanges(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        var table = KeyTable()
        for _ in 0..<400 {
            let change = random.next() % 4
            if change == 0 || table.count == 0 {
                table.grow(to: table.count + Int(random.next() % 20))
            } else if change < 3 {
                table.set(
                    Int(random.next() % UInt64(table.count)), tag: random.next() | 1, key: AESGCM.Key([UInt8](repeating: 7, count: AESGCM.keySize))!)
            } else {
                table.free(Int(random.next() % UInt64(table.count)))
            }
            let limit = Int(random.next() % 40)
            let scanned = Array((0..<table.count).filter { table.tag($0) == 0 }.prefix(limit))
            #expect(table.freeSlots(limit: limit) == scanned)
        }
        // A table loaded from the same slots (as from the key file) finds the same free slots.
        let loaded = KeyTable(count: table.count) { table.tag($0) == 0 ? nil : (table.tag($0), table.key($0)) }
        #expect(loaded.freeSlots(limit: table.count) == table.freeSlots(limit: table.count))
        #expect((0..<table.count).allSatisfy { loaded.tag($0) == table.tag($0) && loaded.key($0) == table.key($0) })
    }

    @Test("a damaged or foreign file is refused")
    func refusesDamage() throws {
        let path = SealingTests.directory() + ".keys"
        defer { try? FileManager.default.removeItem(atPath: path) }
        _ = FileManager.default.createFile(atPath: path, contents: Data(repeating: 9, count: 100))
        #expect(throws: DataKeyError.self) { try DataKeyStore(path: path) }
        _ = FileManager.default.createFile(atPath: path, contents: Data(repeating: 9, count: 128))
        #expect(throws: DataKeyError.self) { try DataKeyStore(path: path) }
    }
}

@Suite("Consent history")
struct ConsentHistoryTests {
    @Test(arguments: StoreKind.allCases)
    func everyDecisionOfEveryMemberOldestFirst(_ kind: StoreKind) throws {
        let fixture = try StoreFixture(kind)
        let texts = [
            #"{"type":"identify","messageId":"h-1","anonymousId":"a-h","timestamp":"2025-10-01T10:00:00Z","context":{"channel":"web","consent":{"categoryPreferences":{"analytics":true}}}}"#,
            #"{"type":"identify","messageId":"h-2","userId":"u-h","timestamp":"2025-10-02T10:00:00Z","traits":{"plan":"gold"}}"#,
            #"{"type":"track","messageId":"h-3","userId":"u-h","event":"Segment Consent Preference Updated","timestamp":"2025-10-03T10:00:00Z","context":{"consent":{"categoryPreferences":{"analytics":false}}}}"#,
            #"{"type":"alias","messageId":"h-4","userId":"u-h","previousId":"a-h","timestamp":"2025-10-04T10:00:00Z"}"#,
        ]
        let deltas = try texts.map { try SegmentMessageParser().parse(JSONParser.parse(Array($0.utf8)), receivedAt: 1_760_000_000_000) }
        _ = try fixture.store.apply(deltas)
        let history = try fixture.store.consentHistory(of: Identifier(kind: .userId, value: "u-h")!)
        #expect(history.map(\.messageId) == ["h-1", "h-3"])
        #expect(history.map { $0.decisions.map(\.granted) } == [[true], [false]])
        #expect(history.first?.identifier == Identifier(kind: .anonymousId, value: "a-h")!)
        // The register keeps only the latest decision; the history keeps both.
        #expect(try fixture.store.view(of: Identifier(kind: .userId, value: "u-h")!)?.head.consent["analytics"]?.granted == false)
    }
}
