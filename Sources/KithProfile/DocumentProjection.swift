/// How documents travel to a member that may hold only part of them (a scoped site): whose
/// documents and links go at all, and what of a head, a ledger entry and an event. Built by the
/// policy (`SiteProjection.documentProjection`) and applied to document states by the store
/// (`DocumentState.projected(by:)`), so the store needs no policy and the policy no store rows.
public struct DocumentProjection: Sendable {
    /// Whether an identifier's document, and links to it, may go.
    public var holds: @Sendable (Identifier) -> Bool
    public var head: @Sendable (SourceHead) -> SourceHead
    public var entry: @Sendable (LedgerEntry) -> LedgerEntry
    /// An event as it may go; nil when it may not go at all.
    public var event: @Sendable (EventRecord) -> EventRecord?

    public init(
        holds: @escaping @Sendable (Identifier) -> Bool, head: @escaping @Sendable (SourceHead) -> SourceHead,
        entry: @escaping @Sendable (LedgerEntry) -> LedgerEntry, event: @escaping @Sendable (EventRecord) -> EventRecord?
    ) {
        self.holds = holds
        self.head = head
        self.entry = entry
        self.event = event
    }
}
