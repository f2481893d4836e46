import KithCRDT
import Testing

@testable import KithProfile

/// A site's report in pages (`ReportPage`): each page replaces exactly the part of the report it
/// covers, so the pages of one report, in turn, give that report and its summary.
@Suite("Report pages")
struct ReportPageTests {
    static func document(_ n: Int, _ version: UInt64 = 0) -> HeldDocument {
        HeldDocument(identifier: Identifier(kind: .userId, value: String(format: "u-%03d", n))!, digest: Digest128(low: version, high: UInt64(n)))
    }

    @Test func pagesInTurnGiveTheWholeReport() {
        let report = (0..<10).map { Self.document($0) }
        var assembled = (0..<12).map { Self.document($0, 7) }  // an older report: other digests, two more documents
        var after: Identifier?
        var pages = 0
        while true {
            let start = after.map { after in report.firstIndex { $0.identifier > after } ?? report.count } ?? 0
            let end = min(report.count, start + 3)
            let page = ReportPage(after: after, documents: Array(report[start..<end]), last: end == report.count)
            assembled = page.applied(to: assembled)
            pages += 1
            if page.last { break }
            after = page.documents.last?.identifier
        }
        #expect(pages == 4)
        #expect(assembled == report, "the documents the site no longer holds went with the last page")
        #expect(HeldDocument.summary(of: assembled) == HeldDocument.summary(of: report))
        #expect(HeldDocument.summary(of: report) != HeldDocument.summary(of: (0..<10).map { Self.document($0, 1) }))
    }

    @Test func aPageCoversItsRangeOnly() {
        let page = ReportPage(after: Self.document(2).identifier, documents: [Self.document(4), Self.document(6)], last: false)
        #expect(!page.covers(Self.document(2).identifier) && page.covers(Self.document(3).identifier))
        #expect(page.covers(Self.document(6).identifier) && !page.covers(Self.document(7).identifier))
        let kept = page.applied(to: [Self.document(1), Self.document(3, 9), Self.document(5, 9), Self.document(8)])
        #expect(kept == [Self.document(1), Self.document(4), Self.document(6), Self.document(8)])
        let last = ReportPage(after: Self.document(2).identifier, documents: [], last: true)
        #expect(last.applied(to: [Self.document(1), Self.document(5)]) == [Self.document(1)], "an empty last page ends the report")
    }
}
