import Foundation
import KithCRDT
import KithJSON
import KithLMDB
import KithProfile
import Testing

@testable import KithStore

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

    @Test("no canary is ever on disk in plain text; after erasure a backup taken before it cannot be read, and the key file holds none of the erased keys")
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
        let erasedKeys = erased.map { Array(hmac.forgetKeyBytes(for: $0).prefix(16)) }.flatMap { store!.sealing.keys.liveKeys(of: $0) }
        #expect(erasedKeys.count == 3)
        #expect(try store!.erase(user, requestedAt: Self.erasedAt).count == 3)
        #expect(try store!.view(of: user) == nil)
        #expect(try store!.view(of: Identifier(kind: .userId, value: "other-user")!) != nil)
        store = nil

        let keyFile = try Self.bytes(path + ".keys")
        for key in erasedKeys { #expect(!contains(keyFile, key), "an erased customer's key is still in the key file") }
        #expect(try Self.canaryHits(in: path + "/data.mdb").isEmpty)
        #expect(try Self.canaryHits(in: backup + "/data.mdb").isEmpty)

        // The backup from before the erasure still holds the sealed rows, but nothing opens them.
        restored = try Self.open(backup, keyFile: path + ".keys")
        #expect(try restored!.view(of: user) == nil)
        #expect(try restored!.view(of: Identifier(kind: .anonymousId, value: "anon-canary-55e1")!) == nil)
        #expect(try restored!.view(of: Identifier(kind: .userId, value: "other-user")!) != nil)
        #expect(try restored!.events(of: user, before: nil, limit: 10).events.isEmpty)
        #expect(try restored!.changes(after: 0, limit: 100).allSatisfy { entry in
            if case .message(let delta) = entry.change { return delta.subject.value == "other-user" }
            return true
        })
    }

    @Test("keys an erasure retired are destroyed at the next open if the process stopped before")
    func retiredKeysAreDestroyedAtOpen() throws {
        let path = Self.directory()
        defer { Self.remove(path) }
        let user = Identifier(kind: .userId, value: "canary-user-0a9b")!
        let pseudonym = Array(hmac.forgetKeyBytes(for: user).prefix(16))
        var store: LMDBProfileStore? = try Self.open(path)
        _ = try store!.apply(Self.canaryMessages())
        let keys = store!.sealing.keys.liveKeys(of: pseudonym)
        #expect(keys.count == 1)
        // What an erasure leaves in meta, as if the process had stopped before destroying.
        let id = DataKeyID(pseudonym: pseudonym, generation: 1)
        #expect(store!.sealing.keys.key(for: id) == keys[0])
        try store!.write { txn in try txn.put(.meta, Sealing.retiredPrefix + SealedWriting.idBytes(id), [], mode: .upsert) }
        store = nil
        store = try Self.open(path)
        #expect(store!.sealing.keys.liveKeys(of: pseudonym).isEmpty)
        #expect(!contains(try Self.bytes(path + ".keys"), keys[0]))
        #expect(try store!.view(of: user) == nil)
        #expect(try store!.view(of: Identifier(kind: .userId, value: "other-user")!) != nil)
    }

    @Test("data newer than an erasure is sealed under a fresh key, and only the old keys die")
    func newerDataGetsAFreshKey() throws {
        let path = Self.directory()
        defer { Self.remove(path) }
        let user = Identifier(kind: .userId, value: "canary-user-0a9b")!
        let pseudonym = Array(hmac.forgetKeyBytes(for: user).prefix(16))
        let store = try Self.open(path)
        _ = try store.apply(Self.canaryMessages())
        let before = store.sealing.keys.liveKeys(of: pseudonym)
        _ = try store.erase(user, requestedAt: Self.erasedAt)
        let text = #"{"type":"identify","messageId":"c-3","userId":"canary-user-0a9b","timestamp":"2025-10-01T10:10:00Z","traits":{"plan":"new"}}"#
        var fresh = try SegmentMessageParser().parse(JSONParser.parse(Array(text.utf8)), receivedAt: Self.erasedAt + 1)
        fresh.times = MessageTimes(timestamp: Self.erasedAt + 60_000, originalTimestamp: nil, sentAt: nil, receivedAt: Self.erasedAt + 60_000)
        #expect(try store.apply([fresh]) == [.applied])
        let after = store.sealing.keys.liveKeys(of: pseudonym)
        #expect(after.count == 1 && !before.contains(after[0]))
        #expect(try store.view(of: user)?.head.traits["plan"] != nil)
        #expect(try store.view(of: user)?.head.traits["city"] == nil)
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

    @Test("two stores cannot share a key file")
    func keyFileIsLocked() throws {
        let path = Self.directory(), other = Self.directory()
        defer { Self.remove(path, other) }
        let store = try Self.open(path)
        #expect(throws: DataKeyError.self) { try Self.open(other, keyFile: path + ".keys") }
        _ = store
    }
}

@Suite("Data key file")
struct DataKeyStoreTests {
    @Test("keys survive reopening; destroying overwrites the slot in place; slots and generations are not reused wrongly")
    func lifecycle() throws {
        let path = SealingTests.directory() + ".keys"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let a = [UInt8](repeating: 1, count: 16), b = [UInt8](repeating: 2, count: 16)
        var keys: DataKeyStore? = try DataKeyStore(path: path)
        let first = try keys!.currentKey(for: a, create: true)!
        let second = try keys!.currentKey(for: b, create: true)!
        #expect(first.created && second.created && first.id.generation != second.id.generation)
        #expect(try keys!.currentKey(for: a, create: true)!.key == first.key)
        try keys!.sync()
        keys = nil

        keys = try DataKeyStore(path: path)
        #expect(keys!.key(for: first.id) == first.key)
        #expect(try keys!.currentKey(for: b, create: false)?.key == second.key)
        let retired = keys!.retire(a)
        #expect(retired == [first.id])
        #expect(try keys!.currentKey(for: a, create: false) == nil)
        #expect(keys!.key(for: first.id) == first.key, "readable until destroyed")
        try keys!.destroy(retired)
        #expect(keys!.key(for: first.id) == nil)
        let file = try SealingTests.bytes(path)
        #expect(!contains(file, first.key) && contains(file, second.key))
        #expect(file.count == KeySlot.headerSize + 2 * KeySlot.size)

        // A new key for `a` takes the freed slot, with a newer generation.
        let third = try keys!.currentKey(for: a, create: true)!
        #expect(third.id.generation > second.id.generation)
        #expect(try SealingTests.bytes(path).count == KeySlot.headerSize + 2 * KeySlot.size)
        keys = nil
        keys = try DataKeyStore(path: path)
        #expect(keys!.key(for: third.id) == third.key && keys!.count == 2)
    }

    @Test("an abandoned transaction's retirements are undone")
    func reinstate() throws {
        let path = SealingTests.directory() + ".keys"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let keys = try DataKeyStore(path: path)
        let a = [UInt8](repeating: 1, count: 16)
        let first = try keys.currentKey(for: a, create: true)!
        keys.reinstate(keys.retire(a))
        #expect(try keys.currentKey(for: a, create: false)?.id == first.id)
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
