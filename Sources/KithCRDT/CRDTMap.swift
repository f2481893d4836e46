/// A map whose values are CRDTs, joined key by key (Shapiro et al. 2011, §3.2 composition).
///
/// Keys are never removed: "removing" a trait is a write of `null` into its register, which keeps
/// the map a plain grow-only composition and avoids the causal context a removable map needs.
public struct CRDTMap<Key: Hashable & Comparable & Sendable, Value: CRDT>: CRDT {
    public private(set) var entries: [Key: Value]

    public init(_ entries: [Key: Value] = [:]) {
        self.entries = entries
    }

    public subscript(key: Key) -> Value? { entries[key] }

    public var isEmpty: Bool { entries.isEmpty }
    public var count: Int { entries.count }

    /// Keys in ascending order (the canonical order used by encodings).
    public var sortedKeys: [Key] { entries.keys.sorted() }

    /// Joins `value` into the entry at `key`.
    public mutating func merge(key: Key, _ value: Value) {
        if var current = entries[key] {
            current.merge(value)
            entries[key] = current
        } else {
            entries[key] = value
        }
    }

    public mutating func merge(_ other: CRDTMap) {
        for (key, value) in other.entries { merge(key: key, value) }
    }

    /// Removes entries the predicate rejects. Not a CRDT operation: used only to apply the
    /// erasure forget set, which every replica applies with the same predicate.
    public mutating func retain(where keep: (Key, Value) -> Bool) {
        entries = entries.filter { keep($0.key, $0.value) }
    }
}
