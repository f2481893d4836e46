/// A map whose values are CRDTs, joined key by key (Shapiro et al. 2011, §3.2 composition).
///
/// Keys are never removed: "removing" a trait is a write of `null` into its register, which keeps
/// the map a plain grow-only composition and avoids the causal context a removable map needs.
/// Entries are kept in key order (`SortedDictionary`), the order their encoding uses.
public struct CRDTMap<Key: Hashable & Comparable & Sendable, Value: CRDT>: CRDT {
    public private(set) var storage: SortedDictionary<Key, Value>

    public init(_ entries: [Key: Value] = [:]) {
        storage = SortedDictionary(entries)
    }

    init(storage: SortedDictionary<Key, Value>) {
        self.storage = storage
    }

    public subscript(key: Key) -> Value? { storage[key] }

    public var isEmpty: Bool { storage.isEmpty }
    public var count: Int { storage.count }

    /// Keys in ascending order (the canonical order used by encodings).
    public var sortedKeys: [Key] { storage.keys }

    /// (key, value) pairs in ascending key order.
    public var pairs: Zip2Sequence<[Key], [Value]> { storage.pairs }

    /// Joins `value` into the entry at `key`.
    public mutating func merge(key: Key, _ value: Value) {
        storage.update(key, default: value) { $0.merge(value) }
    }

    public mutating func merge(_ other: CRDTMap) {
        if storage.isEmpty {
            storage = other.storage
            return
        }
        for (key, value) in other.pairs { merge(key: key, value) }
    }

    /// Removes entries the predicate rejects. Not a CRDT operation: used only to apply the
    /// erasure forget set, which every replica applies with the same predicate.
    public mutating func retain(where keep: (Key, Value) -> Bool) {
        storage.removeAll { !keep($0, $1) }
    }
}
