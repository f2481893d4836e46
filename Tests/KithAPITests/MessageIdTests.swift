import KithHTTP
import KithJSON
import Synchronization
import Testing

@testable import KithAPI

@Suite("Message ids the node makes")
struct NodeMessageIdTests {
    struct NoRandomness: Error {}

    /// A constant id would make every later consent change of the customer a duplicate answered
    /// 200 (issue 21): without random bytes the request is answered 503 instead.
    @Test func withoutRandomBytesTheRequestIsRefused() throws {
        let answered = Mutex<HTTPResponse?>(nil)
        let id = NodeAPI.newMessageId("consent-", random: { throw NoRandomness() }) { response in answered.withLock { $0 = response } }
        #expect(id == nil)
        let response = try #require(answered.withLock { $0 })
        #expect(response.status == 503)
        #expect(try JSONParser.parse(response.body)["error"]?["code"]?.stringValue == "unavailable")
    }

    @Test func idsAreFreshWhenRandomBytesCome() {
        let a = NodeAPI.newMessageId("consent-") { _ in Issue.record("answered") }
        let b = NodeAPI.newMessageId("consent-") { _ in Issue.record("answered") }
        #expect(a != nil && a != b && a!.hasPrefix("consent-") && a!.count == "consent-".count + 24)
    }
}
