import KithCRDT
import KithJSON
import KithProfile

/// What a site whose purposes are `purposes` may hold of one customer, under that customer's
/// consent now (docs/replication.md, "What a scoped member receives"): each field as the most
/// any of those purposes may see it — shown, masked, or not at all. The core sends a scoped
/// site its customers' documents through this, so a field no purpose of the site may see never
/// leaves the core.
///
/// Registers keep their stamps when masked and fields are left out whole, so the join of two
/// projected heads is the projection of their join (`SiteProjectionTests`): a site merges what
/// it receives with the ordinary join. One corner does not commute: two writes with the same
/// stamp but different values (a client reusing a messageId for other content) are ordered by
/// value, and a mask need not keep that order.
public struct SiteProjection: Sendable {
    private let decisions: [ReadDecision]

    /// Each purpose decided as a reader holding all of them would read it. Unknown purposes are
    /// refused (`ReadRefusal.unknownPurpose`): a site configured for a purpose the policy does
    /// not define must not start.
    public init(policy: Policy, purposes: [String], consent: ConsentState) throws(ReadRefusal) {
        let site = Principal(name: "site", role: .reader, purposes: purposes)
        var decisions: [ReadDecision] = []
        for purpose in purposes {
            decisions.append(try ReadDecision(policy: policy, principal: site, requestedPurpose: purpose, consent: consent))
        }
        self.decisions = decisions
    }

    /// Whether the site may hold anything of this customer: not when every purpose withholds
    /// the whole profile (its consent denied or never given where the purpose needs it, or
    /// processing restricted). Then the customer leaves the site, as when it leaves the scope.
    public var holdsAnything: Bool { decisions.contains { !$0.withholdsEverything } }

    /// The most the site's purposes allow for `field`: shown if any shows it, else masked if
    /// any masks it (the policy has one mask per field), else withheld.
    public func decide(_ field: String) -> FieldDecision {
        var masked: FieldDecision?
        var withheld: FieldDecision?
        for decision in decisions {
            let result = decision.decide(field)
            switch result {
            case .allow: return .allow
            case .mask: masked = masked ?? result
            case .withhold: withheld = withheld ?? result
            }
        }
        return masked ?? withheld ?? .withhold(Withheld(field: field, reason: .unknownField))
    }

    /// Whether the site may hold the documents of identifiers of `kind`. A document is keyed by
    /// its identifier, which cannot be masked, so a kind only masked for the site stays at the
    /// core with everything under it.
    public func holds(_ kind: IdentifierKind) -> Bool { decide(kind.fieldName) == .allow }

    /// `head` as the site may hold it: traits left out or masked (stamps kept), groups and events
    /// only where a purpose shows them, revenue stripped from events unless one shows it. Consent
    /// registers always travel: the site needs them to decide, and to forget. Totals are left as
    /// they are; the site derives its own from the ledger entries it holds (`project(_:)` of an
    /// entry).
    public func project(_ head: SourceHead) -> SourceHead {
        var projected = head
        projected.traits = CRDTMap()
        for (name, register) in head.traits.pairs {
            switch decide("traits." + name) {
            case .allow: projected.traits.merge(key: name, register)
            case .mask(let rule):
                projected.traits.merge(key: name, LWWRegister(RawJSON(.string(rule.mask(register.value.value))), stamp: register.stamp))
            case .withhold: continue
            }
        }
        if decide("groups") != .allow { projected.groups = ORSet() }
        projected.recent = head.recent.compactMap { project($0) }
        return projected
    }

    /// An event as the site may hold it: only where a purpose shows events, and its revenue only
    /// where one shows revenue.
    public func project(_ event: EventRecord) -> EventRecord? {
        guard decide("events") == .allow else { return nil }
        var projected = event
        if decide("revenue") != .allow { projected.revenueMicros = nil }
        return projected
    }

    /// The same, for documents as the store ships them (`DocumentState.projected(by:)`).
    public var documentProjection: DocumentProjection {
        DocumentProjection(
            holds: { [self] in holds($0.kind) }, head: { [self] in project($0) }, entry: { [self] in project($0) },
            event: { [self] in project($0) })
    }

    /// A ledger entry as the site may hold it: its revenue only where a purpose shows revenue,
    /// its event name only where one shows events or their totals.
    public func project(_ entry: LedgerEntry) -> LedgerEntry {
        var projected = entry
        if decide("revenue") != .allow { projected.revenueMicros = nil }
        if decide("events") != .allow && decide("aggregates") != .allow { projected.name = "" }
        return projected
    }
}
