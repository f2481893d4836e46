import KithCrypto
import KithStore
import Synchronization

/// The pseudonyms a session computed or learned, both ways (owner identifier key ↔ pseudonym).
/// Most sessions are point reads that meet one or two: those stay in a short list, because two
/// dictionaries' allocations and hashing cost more than the lookups they save (a fifth of a
/// point read's reference counting, measured). Past `listLimit` the dictionaries take over.
struct PseudonymMemo {
    private static let listLimit = 4
    private var list: [(owner: [UInt8], pseudonym: [UInt8])] = []
    private var byOwner: [ByteKey: [UInt8]] = [:]
    private var byPseudonym: [ByteKey: [UInt8]] = [:]

    func pseudonym(of owner: [UInt8]) -> [UInt8]? {
        owner.withUnsafeBytes { pseudonym(ofBytes: $0) }
    }

    func pseudonym(ofBytes owner: UnsafeRawBufferPointer) -> [UInt8]? {
        if let entry = list.first(where: { $0.owner.withUnsafeBytes { $0.elementsEqual(owner) } }) { return entry.pseudonym }
        return byOwner.isEmpty ? nil : byOwner[ByteKey(Array(owner))]
    }

    func owner(of pseudonym: [UInt8]) -> [UInt8]? {
        if let entry = list.first(where: { $0.pseudonym == pseudonym }) { return entry.owner }
        return byPseudonym.isEmpty ? nil : byPseudonym[ByteKey(pseudonym)]
    }

    mutating func insert(owner: [UInt8], pseudonym: [UInt8]) {
        if list.count < Self.listLimit, byOwner.isEmpty {
            if !list.contains(where: { $0.pseudonym == pseudonym }) { list.append((owner, pseudonym)) }
            return
        }
        if !list.isEmpty {
            for entry in list {
                byOwner[ByteKey(entry.owner)] = entry.pseudonym
                byPseudonym[ByteKey(entry.pseudonym)] = entry.owner
            }
            list = []
        }
        byOwner[ByteKey(owner)] = pseudonym
        byPseudonym[ByteKey(pseudonym)] = owner
    }
}

/// The libcrypto contexts one session works with.
final class SessionContexts: Sendable {
    let cipher = AESGCMContext()
    let mac: HMACContext

    init(pseudonymKey: HMACKey) { mac = pseudonymKey.makeContext() }
}

/// Contexts kept between transactions: a read is one short transaction, and making and freeing
/// libcrypto contexts for each costs about as much as opening its row. At most `spareLimit`
/// are kept (about one per thread that reads or writes at once); a session takes its contexts
/// and gives them back under one lock each way.
///
/// A cipher context holds the schedule of the last key it used. When keys are destroyed,
/// `removeAll` frees the spares (libcrypto wipes them), and contexts taken before come back to
/// be freed, not kept: no destroyed key outlives its destruction in a kept context.
final class CipherPool: Sendable {
    static let spareLimit = 16
    private let pseudonymKey: HMACKey
    private let state = Mutex<(spares: [SessionContexts], generation: UInt64)>(([], 0))

    init(pseudonymKey: HMACKey) { self.pseudonymKey = pseudonymKey }

    /// Contexts, and the generation to give them back with.
    func take() -> (contexts: SessionContexts, generation: UInt64) {
        let (spare, generation) = state.withLock { state in (state.spares.popLast(), state.generation) }
        return (spare ?? SessionContexts(pseudonymKey: pseudonymKey), generation)
    }

    func give(_ contexts: SessionContexts, generation: UInt64) {
        state.withLock { state in
            if generation == state.generation && state.spares.count < Self.spareLimit { state.spares.append(contexts) }
        }
    }

    func removeAll() {
        state.withLock { state in
            state.spares.removeAll()
            state.generation &+= 1
        }
    }

    var spareCount: Int { state.withLock { $0.spares.count } }
}
