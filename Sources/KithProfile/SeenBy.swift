/// When each node last accepted a message about a customer from a client: what a scope's
/// `seen` clause asks ("customers this site took in within 30 days"). Derived from the
/// acceptances the customer's ledger rows keep, so it changes with erasures and expiries the same
/// way on every replica.
public struct SeenBy: Equatable, Sendable {
    /// Node id → its latest receipt (milliseconds since 1970, on that node's clock).
    public private(set) var latest: [UInt64: Int64]

    public init(_ latest: [UInt64: Int64] = [:]) {
        self.latest = latest
    }

    /// Whether `node` accepted a message about the customer at or after `since`.
    public func seen(by node: UInt64, since: Int64) -> Bool {
        latest[node].map { $0 >= since } ?? false
    }
}
