import KithProfile

/// How the names touchpoints send consent under resolve to the policy's consent categories.
///
/// Touchpoints do not agree on names: Segment's consent tooling sends `Advertising`, OneTrust
/// sends group ids such as `C0004`, Google Consent Mode has `ad_storage`, IAB TCF numbers its
/// purposes. Kith stores every decision under the name it came with and resolves names here, at
/// read time, so a vocabulary change applies to every decision already held. A name resolves to
/// a category by, in order:
/// - the category's own name or one of its `aliases`, compared case-insensitively;
/// - a Google Consent Mode type the category maps (`ad_storage`), or `tcf:N` for a TCF purpose
///   it maps, when that type or purpose maps to no other category (TCF purpose 1 is needed by
///   several categories, so `tcf:1` decides none of them: it stays unmapped).
/// A name that resolves to nothing is unmapped: kept and shown, never applied.
public struct ConsentVocabulary: Sendable, Equatable {
    /// Name (compared without case) → the category it decides.
    private var categories: [FoldedName: String] = [:]
    /// Names that the policy itself gives to two categories (a parsed policy has none).
    public private(set) var conflicts: [String] = []

    public init(_ mappings: [String: ConsentMapping]) {
        var explicit: [FoldedName: String] = [:]
        var conflicts: Set<FoldedName> = []
        for (category, mapping) in mappings.sorted(by: { $0.key < $1.key }) {
            for name in [category] + mapping.aliases {
                let folded = FoldedName(name)
                if let other = explicit[folded], other != category { conflicts.insert(folded) } else { explicit[folded] = category }
            }
        }
        var framework: [FoldedName: Set<String>] = [:]
        for (category, mapping) in mappings {
            for type in mapping.googleConsentMode { framework[FoldedName(type), default: []].insert(category) }
            for purpose in mapping.tcfPurposes { framework[FoldedName("tcf:\(purpose)"), default: []].insert(category) }
        }
        for (name, owners) in framework where owners.count == 1 && explicit[name] == nil { explicit[name] = owners.first! }
        for name in conflicts { explicit.removeValue(forKey: name) }
        categories = explicit
        self.conflicts = conflicts.map(\.folded).sorted()
    }

    /// Every name (folded) that decides `category`, sorted.
    public func names(of category: String) -> [String] { categories.filter { $0.value == category }.keys.map(\.folded).sorted() }

    /// The category a decision under `name` decides, or nil when the name is unmapped.
    public func category(of name: String) -> String? { categories[FoldedName(name)] }

}

/// A name that hashes and compares with ASCII letters folded to lower case, byte by byte: a
/// read resolves each decision's name without making a lower-cased copy of it. ASCII letters
/// only, so the folding is the same on every node and every platform.
struct FoldedName: Hashable, Sendable {
    let text: String

    init(_ text: String) { self.text = text }

    /// The name as it compares: ASCII letters in lower case.
    var folded: String { ASCIIFolding.folded(text) }

    private static func fold(_ byte: UInt8) -> UInt8 { ASCIIFolding.fold(byte) }

    static func == (a: FoldedName, b: FoldedName) -> Bool {
        a.text.utf8.count == b.text.utf8.count && zip(a.text.utf8, b.text.utf8).allSatisfy { fold($0) == fold($1) }
    }

    func hash(into hasher: inout Hasher) {
        for byte in text.utf8 { hasher.combine(Self.fold(byte)) }
        hasher.combine(text.utf8.count)
    }
}
