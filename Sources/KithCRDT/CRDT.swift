/// A state-based CRDT (a join-semilattice): `merge` is the join.
///
/// Every conforming type guarantees, and its tests check on seeded random states, that merge is
/// commutative (`a ⊔ b == b ⊔ a`), associative (`(a ⊔ b) ⊔ c == a ⊔ (b ⊔ c)`) and idempotent
/// (`a ⊔ a == a`). A *delta* (Almeida, Shoker, Baquero: "Delta State Replicated Data Types", 2018)
/// is a small value of the same type that an operation produces; applying a delta is merging it.
public protocol CRDT: Equatable, Sendable {
    /// Joins `other` into `self`.
    mutating func merge(_ other: Self)
}

extension CRDT {
    /// The join of `self` and `other`, leaving both unchanged.
    public func merging(_ other: Self) -> Self {
        var copy = self
        copy.merge(other)
        return copy
    }
}
