/// An add-wins observed-remove set (Shapiro et al. 2011, §3.3.5; Bieniusa et al.,
/// "An optimized conflict-free replicated set", 2012).
///
/// Every add carries a unique tag; a remove deletes exactly the tags it has observed. An add that
/// is concurrent with a remove carries a tag the remove did not see, so the element stays: adds
/// win. Tags are supplied by the caller — Kith derives them from the message (or node write) that
/// caused the add, so a redelivered message re-adds the same tag and changes nothing, and a tag
/// once removed can never come back, however late an old copy of the add arrives.
///
/// Representation: live tags per element and removed tags per element. A removed tag is kept out
/// of the live set forever, so the state joins by plain set union: `live = (L₁ ∪ L₂) \ (R₁ ∪ R₂)`.
public struct ORSet<Element: Hashable & Comparable & Sendable, Tag: Hashable & Comparable & Sendable>: CRDT {
    public private(set) var live: [Element: Set<Tag>]
    public private(set) var removed: [Element: Set<Tag>]

    public init() {
        live = [:]
        removed = [:]
    }

    public init(live: [Element: Set<Tag>], removed: [Element: Set<Tag>]) {
        self.live = [:]
        self.removed = removed.filter { !$0.value.isEmpty }
        for (element, tags) in live {
            let alive = tags.subtracting(self.removed[element] ?? [])
            if !alive.isEmpty { self.live[element] = alive }
        }
    }

    public func contains(_ element: Element) -> Bool { live[element] != nil }

    /// The present elements in ascending order.
    public var elements: [Element] { live.keys.sorted() }

    /// Adds `element` under `tag` and returns the delta of that add.
    @discardableResult
    public mutating func add(_ element: Element, tag: Tag) -> ORSet {
        let delta = ORSet(live: [element: [tag]], removed: [:])
        merge(delta)
        return delta
    }

    /// Removes `element` (every tag observed here) and returns the delta of that remove.
    @discardableResult
    public mutating func remove(_ element: Element) -> ORSet {
        guard let tags = live[element] else { return ORSet() }
        let delta = ORSet(live: [:], removed: [element: tags])
        merge(delta)
        return delta
    }

    public mutating func merge(_ other: ORSet) {
        for (element, tags) in other.removed {
            removed[element, default: []].formUnion(tags)
            if let alive = live[element] {
                let rest = alive.subtracting(tags)
                live[element] = rest.isEmpty ? nil : rest
            }
        }
        for (element, tags) in other.live {
            let alive = tags.subtracting(removed[element] ?? [])
            if !alive.isEmpty { live[element, default: []].formUnion(alive) }
        }
    }
}
