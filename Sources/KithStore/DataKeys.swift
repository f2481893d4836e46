#if canImport(Glibc)
    import Glibc
#endif
import KithCrypto
import Synchronization

/// Which key sealed a row: the owner's pseudonym and the key's generation. An identifier gets a
/// new generation when it is erased and its data that survives (newer than the erasure) is
/// sealed again, so every key that ever sealed an erased customer's data can be destroyed.
struct DataKeyID: Hashable, Sendable {
    var pseudonym: [UInt8]
    var generation: UInt64
}

/// The slot layout of the key file, pure: `header (64 bytes)`, then 64-byte slots of
/// `pseudonym (16) ‖ generation (8, big-endian) ‖ key (32) ‖ zero (8)`. An all-zero slot is free.
enum KeySlot {
    static let size = 64
    static let headerSize = 64
    static let magic = Array("KITHKEY1".utf8)

    static var header: [UInt8] { magic + [UInt8](repeating: 0, count: headerSize - magic.count) }

    static func offset(_ slot: Int) -> Int { headerSize + slot * size }

    static func encode(_ id: DataKeyID, key: [UInt8]) -> [UInt8] {
        precondition(id.pseudonym.count == 16 && key.count == AESGCM.keySize)
        let generation = (0..<8).map { UInt8(truncatingIfNeeded: id.generation >> (56 - 8 * $0)) }
        return id.pseudonym + generation + key + [UInt8](repeating: 0, count: 8)
    }

    /// The key in a slot, or nil for a free slot.
    static func decode(_ bytes: ArraySlice<UInt8>) -> (id: DataKeyID, key: [UInt8])? {
        guard bytes.count == size, bytes.contains(where: { $0 != 0 }) else { return nil }
        let start = bytes.startIndex
        let generation = bytes[(start + 16)..<(start + 24)].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        return (DataKeyID(pseudonym: Array(bytes[start..<(start + 16)]), generation: generation), Array(bytes[(start + 24)..<(start + 56)]))
    }
}

/// The data keys of one store, in a file of their own kept apart from the data and its backups
/// (docs/storage.md, "Sealing"). A key is destroyed by overwriting its slot in place and syncing
/// the file: LMDB never overwrites in place (old values linger in free pages until reused, and
/// in every backup), which is exactly why the keys do not live in LMDB.
///
/// Writers create keys with `currentKey(for:create:)` and must `sync()` before committing data
/// sealed under a new key; readers find any live generation with `key(for:)`.
final class DataKeyStore: @unchecked Sendable {
    private struct State {
        var keys: [DataKeyID: (slot: Int, key: [UInt8])] = [:]
        /// The generation new rows of a pseudonym are sealed with.
        var current: [[UInt8]: UInt64] = [:]
        var freeSlots: [Int] = []
        var slotCount = 0
        var nextGeneration: UInt64 = 1
        var unsynced = false
    }

    let path: String
    /// Whether this open created the file: a store with data and a new key file has lost its keys.
    private(set) var createdNow = false
    private let descriptor: Int32
    private let state = Mutex(State())

    init(path: String) throws {
        self.path = path
        descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw DataKeyError("cannot open the key file \(path): \(String(cString: strerror(errno)))") }
        // One store at a time: two writers of slots would hand out the same slot twice.
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            close(descriptor)
            throw DataKeyError("the key file \(path) is in use by another store")
        }
        do {
            try load()
        } catch {
            close(descriptor)
            throw error
        }
    }

    deinit { close(descriptor) }

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
        state.withLock { state in
            state.slotCount = (size - KeySlot.headerSize) / KeySlot.size
            for slot in 0..<state.slotCount {
                let start = KeySlot.offset(slot)
                guard let (id, key) = KeySlot.decode(bytes[start..<(start + KeySlot.size)]) else {
                    state.freeSlots.append(slot)
                    continue
                }
                state.keys[id] = (slot, key)
                state.current[id.pseudonym] = max(state.current[id.pseudonym] ?? 0, id.generation)
                state.nextGeneration = max(state.nextGeneration, id.generation + 1)
            }
            state.freeSlots.reverse()
        }
    }

    /// The key that sealed rows of `id`, if it still exists.
    func key(for id: DataKeyID) -> [UInt8]? {
        state.withLock { $0.keys[id]?.key }
    }

    /// The key new rows of `pseudonym` are sealed with; with `create`, a new one when there is
    /// none (written to its slot now, durable at the next `sync()`). Returns nil only without
    /// `create`.
    func currentKey(for pseudonym: [UInt8], create: Bool) throws -> (id: DataKeyID, key: [UInt8], created: Bool)? {
        if let found = state.withLock({ state -> (DataKeyID, [UInt8])? in
            guard let generation = state.current[pseudonym] else { return nil }
            let id = DataKeyID(pseudonym: pseudonym, generation: generation)
            return state.keys[id].map { (id, $0.key) }
        }) {
            return (found.0, found.1, false)
        }
        guard create else { return nil }
        let key = try Crypto.randomBytes(AESGCM.keySize)
        let (id, slot) = state.withLock { state -> (DataKeyID, Int) in
            let id = DataKeyID(pseudonym: pseudonym, generation: state.nextGeneration)
            state.nextGeneration += 1
            let slot = state.freeSlots.popLast() ?? state.slotCount
            state.slotCount = max(state.slotCount, slot + 1)
            state.keys[id] = (slot, key)
            state.current[pseudonym] = id.generation
            state.unsynced = true
            return (id, slot)
        }
        try write(KeySlot.encode(id, key: key), at: KeySlot.offset(slot))
        return (id, key, true)
    }

    /// Every generation of `pseudonym`, which stop being used for new rows at once; they stay
    /// readable until `destroy` (or until `reinstate` when the transaction is abandoned).
    func retire(_ pseudonym: [UInt8]) -> [DataKeyID] {
        state.withLock { state in
            state.current[pseudonym] = nil
            return state.keys.keys.filter { $0.pseudonym == pseudonym }.sorted { $0.generation < $1.generation }
        }
    }

    /// Undoes `retire` for a transaction that did not commit.
    func reinstate(_ ids: [DataKeyID]) {
        state.withLock { state in
            for id in ids where state.keys[id] != nil {
                state.current[id.pseudonym] = max(state.current[id.pseudonym] ?? 0, id.generation)
            }
        }
    }

    /// Makes every key written so far durable.
    func sync() throws {
        guard state.withLock({ $0.unsynced }) else { return }
        try synchronize()
        state.withLock { $0.unsynced = false }
    }

    /// Overwrites the slots of `ids` with zeros in place and syncs: data sealed under them can
    /// no longer be opened, wherever a copy of it lies.
    func destroy(_ ids: [DataKeyID]) throws {
        let slots = state.withLock { state in ids.compactMap { state.keys[$0]?.slot } }
        guard !slots.isEmpty else { return }
        for slot in slots { try write([UInt8](repeating: 0, count: KeySlot.size), at: KeySlot.offset(slot)) }
        try synchronize()
        state.withLock { state in
            for id in ids {
                guard let removed = state.keys.removeValue(forKey: id) else { continue }
                state.freeSlots.append(removed.slot)
                if state.current[id.pseudonym] == id.generation { state.current[id.pseudonym] = nil }
            }
        }
    }

    /// How many keys are live (for tests and statistics).
    var count: Int { state.withLock { $0.keys.count } }

    /// Every live key of `pseudonym` (for tests).
    func liveKeys(of pseudonym: [UInt8]) -> [[UInt8]] {
        state.withLock { state in state.keys.filter { $0.key.pseudonym == pseudonym }.map(\.value.key) }
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
