import KithCRDT
import KithJSON

/// One person as readers see them: the canonical identifier, every member identifier, and the
/// combination of the members' source documents.
public struct ProfileView: Equatable, Sendable {
    public var canonical: Identifier
    public var members: [Identifier]
    public var head: SourceHead

    public init(canonical: Identifier, members: [Identifier], head: SourceHead) {
        self.canonical = canonical
        self.members = members
        self.head = head
    }

    /// Builds the view of one person from the heads of its members.
    public static func assemble(
        members: [Identifier], heads: [SourceHead], rules: IdentityRules, historyLimit: Int
    ) -> ProfileView {
        precondition(!members.isEmpty, "a profile view needs at least one member")
        var head = SourceHead()
        for other in heads { head.combine(other, historyLimit: historyLimit) }
        return ProfileView(canonical: rules.canonical(of: members)!, members: members.sorted(), head: head)
    }
}

/// Settings every replica must share for the same messages to give the same profiles.
public struct ProfileConfiguration: Sendable, Equatable {
    public var rules: IdentityRules
    /// How many recent events (with their properties) a profile keeps; totals stay exact beyond it.
    public var historyLimit: Int

    public init(rules: IdentityRules = .builtIn, historyLimit: Int = 10) {
        precondition(historyLimit >= 0, "historyLimit must not be negative")
        self.rules = rules
        self.historyLimit = historyLimit
    }
}
