import KithCRDT
import KithHTTP
import KithTestSupport
import Testing

/// Feeds `text` in pieces of the given sizes and collects every step until it needs more.
private func parse(_ text: String, pieces: [Int]? = nil, limits: HTTPRequestParser.Limits = .init()) -> [HTTPRequestParser.Step] {
    var parser = HTTPRequestParser(limits: limits)
    var steps: [HTTPRequestParser.Step] = []
    let bytes = Array(text.utf8)
    var offset = 0
    for size in (pieces ?? [bytes.count]) + [bytes.count] where offset < bytes.count {
        parser.append(bytes[offset..<min(bytes.count, offset + size)])
        offset = min(bytes.count, offset + size)
        steps += parser.drain()
        if case .failed? = steps.last { return steps }
    }
    return steps
}

private func requests(_ steps: [HTTPRequestParser.Step]) -> [HTTPRequest] {
    steps.compactMap { if case .request(let r) = $0 { r } else { nil } }
}

private func failure(_ text: String, limits: HTTPRequestParser.Limits = .init()) -> Int? {
    for step in parse(text, limits: limits) { if case .failed(let error) = step { return error.status } }
    return nil
}

@Suite("HTTP/1.1 request parser")
struct HTTPRequestParserTests {
    @Test func parsesAGetWithQueryAndHeaders() {
        let result = requests(parse("GET /v1/profiles/user_id:u-1?purpose=support HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t \r\n\r\n"))
        #expect(result.count == 1)
        #expect(result.first?.method == "GET")
        #expect(result.first?.path == "/v1/profiles/user_id:u-1")
        #expect(result.first?.query == "purpose=support")
        #expect(result.first?.header("authorization") == "Bearer t")
        #expect(result.first?.keepAlive == true)
        #expect(result.first?.body == [])
    }

    @Test func bodiesAreTheSameHoweverTheBytesAreSplit() {
        let text = "POST /v1/batch HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world"
        let whole = requests(parse(text))
        #expect(whole.first?.body == Array("hello world".utf8))
        for piece in 1...12 { #expect(requests(parse(text, pieces: Array(repeating: piece, count: 100))) == whole) }
    }

    @Test func pipelinedRequestsComeOutInOrder() {
        let text = "GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /c HTTP/1.1\r\nConnection: close\r\n\r\n"
        let result = requests(parse(text))
        #expect(result.map(\.target) == ["/a", "/b", "/c"])
        #expect(result[1].body == Array("hi".utf8))
        #expect(result[2].keepAlive == false)
    }

    @Test func chunkedBodiesWithExtensionsAndTrailers() {
        let text = "POST /v1/batch HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"
        for piece in [1, 2, 3, 7, 1_000] {
            let result = requests(parse(text, pieces: Array(repeating: piece, count: 200)))
            #expect(result.first?.body == Array("hello world".utf8), "pieces of \(piece)")
        }
    }

    @Test func expectContinueIsReportedUntilTheBodyStarts() {
        var parser = HTTPRequestParser()
        parser.append(Array("POST /v1/track HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n".utf8))
        #expect(parser.next() == .needMore(expectsContinue: true))
        parser.append(Array("h".utf8))
        #expect(parser.next() == .needMore(expectsContinue: false))
        parser.append(Array("i".utf8))
        guard case .request(let request) = parser.next() else { Issue.record("no request"); return }
        #expect(request.body == Array("hi".utf8))
        #expect(parser.isIdle)
    }

    @Test func http10ClosesUnlessAskedToKeepAlive() {
        #expect(requests(parse("GET / HTTP/1.0\r\n\r\n")).first?.keepAlive == false)
        #expect(requests(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")).first?.keepAlive == true)
    }

    @Test(
        arguments: [
            ("GET / HTTP/1.1\n\n", 400), ("GET /\r\n\r\n", 400), ("GET  / HTTP/1.1\r\n\r\n", 400), ("G(T / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/2.0\r\n\r\n", 505), ("GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nName : x\r\n\r\n", 400), ("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n: empty\r\n\r\n", 400), ("GET / HTTP/1.1\r\nA: b\rc\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400), ("POST / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 600000\r\n\r\n", 413),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n80001\r\n", 413),
        ] as [(String, Int)])
    func refusesMalformedAndAmbiguousRequests(_ text: String, _ status: Int) {
        #expect(failure(text) == status, "\(text.debugDescription)")
    }

    @Test func enforcesSizeLimitsWithTheRightStatus() {
        #expect(failure("GET /" + String(repeating: "a", count: 9_000) + " HTTP/1.1\r\n\r\n") == 414)
        let manyHeaders = (0..<101).map { "H\($0): v\r\n" }.joined()
        #expect(failure("GET / HTTP/1.1\r\n" + manyHeaders + "\r\n") == 431)
        #expect(failure("GET / HTTP/1.1\r\nBig: " + String(repeating: "v", count: 17_000) + "\r\n\r\n") == 431)
        // A slow client sending an endless header line is refused before the line ends.
        var parser = HTTPRequestParser()
        parser.append(Array(("GET / HTTP/1.1\r\nX: " + String(repeating: "v", count: 20_000)).utf8))
        #expect(parser.next() == .failed(HTTPParseError(.headersTooLarge)))
    }

    @Test func staysFailedAfterAnError() {
        var parser = HTTPRequestParser()
        parser.append(Array("BAD\r\n\r\nGET / HTTP/1.1\r\n\r\n".utf8))
        #expect(parser.next() == .failed(HTTPParseError(.malformedRequestLine)))
        #expect(parser.next() == .failed(HTTPParseError(.malformedRequestLine)))
    }

    @Test func randomRequestsParseTheSameInAnySplit() {
        var random = SplitMix64(seed: 81)
        for _ in 0..<500 {
            var text = ""
            var expected: [(String, [UInt8])] = []
            for i in 0..<(1 + random.below(3)) {
                let body = (0..<random.below(300)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                let target = "/r\(i)?q=\(random.below(1_000))"
                text += "POST \(target) HTTP/1.1\r\nHost: h\r\n"
                if random.chance(50) {
                    text += "Content-Length: \(body.count)\r\n\r\n" + String(decoding: body.map { $0 & 0x7F }, as: UTF8.self)
                    expected.append((target, body.map { $0 & 0x7F }))
                } else {
                    text += "Transfer-Encoding: chunked\r\n\r\n"
                    var rest = body.map { $0 & 0x7F }[...]
                    while !rest.isEmpty {
                        let size = 1 + random.below(rest.count)
                        text += String(size, radix: 16) + "\r\n" + String(decoding: rest.prefix(size), as: UTF8.self) + "\r\n"
                        rest = rest.dropFirst(size)
                    }
                    text += "0\r\n\r\n"
                    expected.append((target, body.map { $0 & 0x7F }))
                }
            }
            let pieces = (0..<200).map { _ in 1 + random.below(64) }
            let result = requests(parse(text, pieces: pieces))
            #expect(result.map(\.target) == expected.map(\.0))
            #expect(result.map(\.body) == expected.map(\.1))
        }
    }
}
