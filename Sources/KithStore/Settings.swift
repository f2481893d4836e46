import KithCRDT
import KithProfile

/// Cluster settings (webhook subscriptions and their delivery state): last-writer-wins registers
/// in `meta` under `setting:` and their name, each stored as its stamp and value, written as
/// changes and replicated with the log (`ChangeEntry.Change.setting`). They hold no customer's
/// data and are not part of the digest tree: a node that missed one (back after a resync) learns
/// it when its owner writes it again (docs/feed.md, "Webhooks").
public struct StoredSetting: Equatable, Sendable {
    public var name: String
    /// Empty: removed (a tombstone, kept so that an older value never comes back).
    public var value: [UInt8]
    public var stamp: LWWStamp

    public init(name: String, value: [UInt8], stamp: LWWStamp) {
        self.name = name
        self.value = value
        self.stamp = stamp
    }
}

let settingMetaPrefix = Array("setting:".utf8)

func settingKey(_ name: String) -> [UInt8] { settingMetaPrefix + Array(name.utf8) }

extension WriteContext {
    /// Writes `value` under `name` if `stamp` is newer than what is stored, and logs the change
    /// either way (a setting written again with its own stamp reaches the nodes that lack it).
    func setSetting(_ name: String, _ value: [UInt8], stamp: LWWStamp, origin: ChangeOrigin?) throws {
        let key = settingKey(name)
        let newer = try txn.get(.meta, key).map { try StoreEngine.decodeSetting(name, $0).stamp < stamp } ?? true
        if newer {
            var writer = BinaryWriter(capacity: value.count + 32)
            stamp.encode(to: &writer)
            writer.write(bytes: value)
            try txn.put(.meta, key, writer.bytes, mode: .upsert)
        }
        try log(.setting(name: name, value: value, stamp: stamp), origin: origin)
    }
}

extension StoreEngine {
    static func decodeSetting(_ name: String, _ bytes: [UInt8]) throws -> StoredSetting {
        var reader = BinaryReader(bytes)
        let stamp = try LWWStamp(from: &reader)
        let value = Array(try reader.readBytes())
        try reader.expectEnd()
        return StoredSetting(name: name, value: value, stamp: stamp)
    }

    /// The setting named exactly `name`, if any (a removed one too).
    package func setting(named name: String, in reader: some StoreReading) throws -> StoredSetting? {
        try reader.get(.meta, settingKey(name)).map { bytes in try decode(bytes, table: .meta) { try Self.decodeSetting(name, $0) } }
    }

    /// The settings whose names begin with `prefix`, in name order.
    package func settings(prefix: String, in reader: some StoreReading) throws -> [StoredSetting] {
        var found: [StoredSetting] = []
        let keyPrefix = settingKey(prefix)
        try reader.scan(.meta, prefix: keyPrefix) { key, value in
            let name = String(decoding: key[settingMetaPrefix.count...], as: UTF8.self)
            found.append(try decode(value, table: .meta) { try Self.decodeSetting(name, $0) })
            return .next
        }
        return found
    }
}
