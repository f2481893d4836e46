import KithCrypto
import KithStore
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A data key: the slot of the key file holding it and the random tag written with it. The tag
/// tells a key from a later one in the same slot, so a row sealed under a destroyed key is
/// recognised as such (and not as damage) even after its slot is reused.
struct DataKeyID: Hashable, Sendable {
    var slot: UInt32
    var tag: UInt64
}

/// The slot layout of the key file, pure: `header (64 bytes)`, then 64-byte slots of
/// `tag (8, big-endian, never 0) ‖ key (32) ‖ zero (24)`. An all-zero slot is free.
enum KeySlot {
    static let size = 64
    static let headerSize = 64
    static let magic = Array("KITHKEY2".utf8)

    static var header: [UInt8] { magic + [UInt8](repeating: 0, count: headerSize - magic.count) }

    static func offset(_ slot: UInt32) -> Int { headerSize + Int(slot) * size }

    static func encode(tag: UInt64, key: AESGCM.Key) -> [UInt8] {
        precondition(tag != 0)
        return bigEndian(tag) + key.byteArray + [UInt8](repeating: 0, count: size - 8 - AESGCM.keySize)
    }

    /// The tag and key in a slot, or nil for a free slot.
    static func decode(_ bytes: ArraySlice<UInt8>) -> (tag: UInt64, key: AESGCM.Key)? {
        guard bytes.count == size else { return nil }
        let start = bytes.startIndex
        let tag = bytes[start..<(start + 8)].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard tag != 0 else { return nil }
        return (tag, AESGCM.Key(bytes[(start + 8)..<(start + 8 + AESGCM.keySize)])!)
    }

    static func bigEndian(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (56 - 8 * $0)) } }
}

/// Every slot's tag and key in memory, in one flat buffer of `tag (8) ‖ key (32)` a slot: a read
/// of a random customer's row finds its key with one access to one place, where an array of
/// tags and an array of separately allocated keys cost a cache miss each (measured: the key
/// lookup was a tenth of a point read on the full workload's store).
struct KeyTable {
    private static let stride = 8 + AESGCM.keySize
    private var bytes: [UInt8] = []
    /// The slots with a zero tag, kept as slots change: finding free slots by scanning every
    /// slot made each pool of new keys cost a pass over all keys (quadratic in a store's life,
    /// and done holding the lock that every read's key lookup takes).
    private var freeSet: Set<Int> = []

    var count: Int { bytes.count / Self.stride }

    init() {}

    /// The table of a key file's `count` slots; `decode` gives a slot's tag and key, nil for a
    /// free one. Only free slots enter the free set, so loading a file of live keys does not
    /// leave a set sized for all of them behind.
    init(count: Int, decode: (Int) -> (tag: UInt64, key: AESGCM.Key)?) {
        bytes = [UInt8](repeating: 0, count: count * Self.stride)
        for slot in 0..<count {
            if let found = decode(slot) { set(slot, tag: found.tag, key: found.key) } else { freeSet.insert(slot) }
        }
    }

    /// Whether slot `id.slot` holds the key `id` names (a zero tag marks a free slot).
    func holds(_ id: DataKeyID) -> Bool { Int(id.slot) < count && tag(Int(id.slot)) == id.tag }

    func tag(_ slot: Int) -> UInt64 {
        bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: slot * Self.stride, as: UInt64.self) }
    }

    func key(_ slot: Int) -> AESGCM.Key {
        bytes.withUnsafeBytes { AESGCM.Key(loading: $0.baseAddress! + slot * Self.stride + 8) }
    }

    /// Adds free slots up to `count` slots.
    mutating func grow(to count: Int) {
        guard count > self.count else { return }
        freeSet.formUnion(self.count..<count)
        bytes += [UInt8](repeating: 0, count: (count - self.count) * Self.stride)
    }

    mutating func set(_ slot: Int, tag: UInt64, key: AESGCM.Key) {
        precondition(tag != 0)
        let start = slot * Self.stride
        withUnsafeBytes(of: tag) { bytes.replaceSubrange(start..<(start + 8), with: $0) }
        bytes.replaceSubrange((start + 8)..<(start + Self.stride), with: key.byteArray)
        freeSet.remove(slot)
    }

    mutating func free(_ slot: Int) {
        let start = slot * Self.stride
        bytes.replaceSubrange(start..<(start + Self.stride), with: repeatElement(0, count: Self.stride))
        freeSet.insert(slot)
    }

    /// The lowest free slots, at most `limit`: linear in the free slots, not in all slots.
    func freeSlots(limit: Int) -> [Int] { Array(freeSet.sorted().prefix(limit)) }
}

/// The data keys of one store, in a file of their own kept apart from the data and its backups
/// (docs/storage.md, "Sealing"). A key is destroyed by overwriting its slot in place and syncing
/// the file: LMDB never overwrites in place (old values linger in free pages until reused, and
/// in every backup), which is why the keys do not live in LMDB.
///
/// Which identifier uses which key is recorded in the store itself (each sealed row names its
/// key), committed with the data; this file only holds keys. Keys are made ahead, a pool at a
/// time with one sync, so a new identifier costs no sync of its own. At open every key in the
/// file counts as in use: the unused part of a pool from before a restart is not handed out
/// again (at most `poolSize` slots per restart).
final class DataKeyStore: @unchecked Sendable {
    static let poolSize = 1_024

    private struct State {
        var slots = KeyTable()
        /// Synced keys not yet handed out.
        var pool: [DataKeyID] = []
    }

    let path: String
    /// Whether this open created the file: a store with data and a new key file has lost its keys.
    private(set) var createdNow = false
    private let descriptor: Int32
    private let state = Mutex(State())
    /// Serialises pool refills and destruction (file writes and syncs).
    private let fileLock = Mutex<Void>(())

    init(path: String) throws {
        self.path = path
        descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        // Every stored property is set from here on, so a throw below still runs `deinit`,
        // which closes the descriptor: closing it here too would close whatever file another
        // thread had been given the same number in between.
        guard descriptor >= 0 else { throw DataKeyError("cannot open the key file \(path): \(String(cString: strerror(errno)))") }
        // One store at a time: two stores would hand out the same slots.
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else { throw DataKeyError("the key file \(path) is in use by another store") }
        try load()
    }

    deinit {
        if descriptor >= 0 { close(descriptor) }
    }

    /// Removes the file this open created (when the store refuses it), so that a later open
    /// does not take the empty file for the store's keys.
    func discardIfCreatedNow() {
        if createdNow { unlink(path) }
    }

    private func load() throws {
        let size = Int(lseek(descriptor, 0, SEEK_END))
        if size == 0 {
            createdNow = true
            try write(KeySlot.header, at: 0)
            try synchronize()
            try synchronizeDirectory()
            return
        }
        guard size >= KeySlot.headerSize, (size - KeySlot.headerSize) % KeySlot.size == 0 else {
            throw DataKeyError("the key file \(path) is damaged (\(size) bytes)")
        }
        let bytes = try read(count: size, at: 0)
        guard Array(bytes.prefix(KeySlot.magic.count)) == KeySlot.magic else { throw DataKeyError("\(path) is not a Kith key file") }
        let count = (size - KeySlot.headerSize) / KeySlot.size
        let slots = KeyTable(count: count) { slot in
            let start = KeySlot.offset(UInt32(slot))
            return KeySlot.decode(bytes[start..<(start + KeySlot.size)])
        }
        state.withLock { $0.slots = slots }
    }

    /// The key of `id`, or nil when it has been destroyed.
    func key(for id: DataKeyID) -> AESGCM.Key? {
        state.withLock { state in
            state.slots.holds(id) ? state.slots.key(Int(id.slot)) : nil
        }
    }

    /// A new key, already durable. Refills the pool (one sync) when it is empty.
    func issue() throws -> (id: DataKeyID, key: AESGCM.Key) {
        while true {
            if let issued = state.withLock({ state -> (DataKeyID, AESGCM.Key)? in
                guard let id = state.pool.popLast() else { return nil }
                return (id, state.slots.key(Int(id.slot)))
            }) {
                return issued
            }
            try refill()
        }
    }

    /// Keys issued to a transaction that did not commit go back to the pool.
    func release(_ ids: [DataKeyID]) {
        state.withLock { state in
            for id in ids where state.slots.holds(id) { state.pool.append(id) }
        }
    }

    /// Overwrites the slots of `ids` with zeros in place and syncs: data sealed under them can
    /// no longer be opened, wherever a copy of it lies.
    func destroy(_ ids: [DataKeyID]) throws {
        try fileLock.withLock { _ in
            let live = state.withLock { state in ids.filter { state.slots.holds($0) } }
            guard !live.isEmpty else { return }
            for id in live { try write([UInt8](repeating: 0, count: KeySlot.size), at: KeySlot.offset(id.slot)) }
            try synchronize()
            state.withLock { state in
                for id in live { state.slots.free(Int(id.slot)) }
            }
        }
    }

    /// Makes `poolSize` keys: free slots first, then new ones at the end; one sync for all.
    /// The randomness comes in one draw and the new slots at the end go in one write: a pool is
    /// made every `poolSize` new identifiers, so its cost is paid on the ingest path.
    private func refill() throws {
        try fileLock.withLock { _ in
            guard state.withLock({ $0.pool.isEmpty }) else { return }
            let (free, end) = state.withLock { state in
                (state.slots.freeSlots(limit: Self.poolSize).map { UInt32($0) }, UInt32(state.slots.count))
            }
            let slots = free + (end..<(end + UInt32(Self.poolSize - free.count)))
            let random = try Crypto.randomBytes(Self.poolSize * (8 + AESGCM.keySize))
            var made: [(DataKeyID, AESGCM.Key)] = []
            var appended: [UInt8] = []
            for (index, slot) in slots.enumerated() {
                let start = index * (8 + AESGCM.keySize)
                // A zero tag marks a free slot; one in 2^64 draws is replaced by 1.
                let tag = max(1, random[start..<(start + 8)].reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
                let key = AESGCM.Key(random[(start + 8)..<(start + 8 + AESGCM.keySize)])!
                let encoded = KeySlot.encode(tag: tag, key: key)
                if slot >= end { appended += encoded } else { try write(encoded, at: KeySlot.offset(slot)) }
                made.append((DataKeyID(slot: slot, tag: tag), key))
            }
            if !appended.isEmpty { try write(appended, at: KeySlot.offset(end)) }
            try synchronize()
            state.withLock { state in
                for (id, key) in made {
                    state.slots.grow(to: Int(id.slot) + 1)
                    state.slots.set(Int(id.slot), tag: id.tag, key: key)
                }
                // Lowest slots first, so that a file with holes fills them before it grows.
                state.pool = made.map(\.0).reversed()
            }
        }
    }

    // MARK: - File access

    private func write(_ bytes: [UInt8], at offset: Int) throws {
        let written = bytes.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, off_t(offset)) }
        guard written == bytes.count else { throw DataKeyError("cannot write the key file \(path): \(String(cString: strerror(errno)))") }
    }

    private func read(count: Int, at offset: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let got = bytes.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, count, off_t(offset)) }
        guard got == count else { throw DataKeyError("cannot read the key file \(path)") }
        return bytes
    }

    /// A new file's directory entry must be durable too, or a crash could lose the whole file.
    private func synchronizeDirectory() throws {
        let directory = path.lastIndex(of: "/").map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let handle = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard handle >= 0 else { throw DataKeyError("cannot open the directory of \(path)") }
        defer { close(handle) }
        guard fsync(handle) == 0 else { throw DataKeyError("cannot sync the directory of \(path)") }
    }

    private func synchronize() throws {
        guard fdatasync(descriptor) == 0 else { throw DataKeyError("cannot sync the key file \(path): \(String(cString: strerror(errno)))") }
    }
}

public struct DataKeyError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}
