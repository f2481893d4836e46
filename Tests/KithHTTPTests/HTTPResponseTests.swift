import Testing

@testable import KithHTTP

@Suite("Responses on the wire")
struct HTTPResponseTests {
    @Test func aResponseIsWrittenWithItsLengthAndHeaders() {
        let response = HTTPResponse(status: 404, headers: [HTTPHeader("ETag", "\"ab\""), HTTPHeader("Request-Id", "7f")], body: Array("{}".utf8))
        #expect(
            String(decoding: response.serialized(closing: false), as: UTF8.self)
                == "HTTP/1.1 404 Not Found\r\nETag: \"ab\"\r\nRequest-Id: 7f\r\nContent-Length: 2\r\n\r\n{}")
        #expect(
            String(decoding: HTTPResponse(status: 204).serialized(closing: true), as: UTF8.self)
                == "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    }

    @Test func lengthsOfEveryMagnitudeAreWrittenInDecimal() {
        for length in [0, 7, 9, 10, 99, 100, 4_096, 65_535, 1_000_000] {
            let bytes = HTTPResponse(status: 200, body: [UInt8](repeating: 0x61, count: length)).serialized(closing: false)
            let text = String(decoding: bytes.prefix(64), as: UTF8.self)
            #expect(text.hasPrefix("HTTP/1.1 200 OK\r\nContent-Length: \(length)\r\n\r\n"), "\(length)")
            #expect(bytes.count == "HTTP/1.1 200 OK\r\nContent-Length: \(length)\r\n\r\n".utf8.count + length)
        }
    }

    @Test func appendingKeepsWhatTheBufferHeld() {
        var output = Array("earlier".utf8)
        HTTPResponse(status: 200, body: Array("x".utf8)).serialize(closing: false, into: &output)
        #expect(String(decoding: output, as: UTF8.self) == "earlierHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    }

    @Test func aStreamedResponseHasNoLengthAndCloses() {
        let stream = HTTPBodyStream()
        let bytes = HTTPResponse(status: 200, headers: [HTTPHeader("Content-Type", "text/plain")], stream: stream).serialized(closing: false)
        #expect(String(decoding: bytes, as: UTF8.self) == "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
    }
}
