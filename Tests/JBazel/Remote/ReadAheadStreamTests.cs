using System.Net;
using System.Net.Sockets;
using Rbs.JBazel.Remote;

namespace Rbs.Tests.JBazel.Remote;

/// <summary>jbazel's connection stream: many small reads served from one socket read, every byte in order, writes unchanged.</summary>
public sealed class ReadAheadStreamTests
{
    [Fact]
    public async Task SmallReadsAreServedFromOneInnerReadInOrder()
    {
        var data = Enumerable.Range(0, 100_000).Select(i => (byte)(i * 7)).ToArray();
        var inner = new CountingStream(new MemoryStream(data));
        using var stream = new ReadAheadStream(inner);

        var received = new MemoryStream();
        var chunk = new byte[9];
        int read;
        while ((read = await stream.ReadAsync(chunk)) > 0)
        {
            received.Write(chunk, 0, read);
        }

        Assert.Equal(data, received.ToArray());
        Assert.Equal(2, inner.Reads); // the whole 100 kB in one, then the end of the stream
        Assert.Equal(0, await stream.ReadAsync(chunk));
    }

    [Fact]
    public void AReadAsLargeAsTheBufferGoesStraightToTheSocketAndSyncReadsWorkToo()
    {
        var data = new byte[ReadAheadStream.BufferSize * 2];
        Random.Shared.NextBytes(data);
        var inner = new CountingStream(new MemoryStream(data));
        using var stream = new ReadAheadStream(inner);

        var head = new byte[10];
        Assert.Equal(10, stream.Read(head));
        var rest = new byte[ReadAheadStream.BufferSize * 2];
        var total = 0;
        int read;
        while ((read = stream.Read(rest.AsSpan(total))) > 0)
        {
            total += read;
        }

        Assert.Equal(data, head.Concat(rest.AsSpan(0, total).ToArray()));
        Assert.Equal(data.Length - 10, total);
    }

    [Fact]
    public async Task ConnectAsyncOpensATcpConnectionWhoseWritesAndReadsPassThrough()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        var accept = listener.AcceptTcpClientAsync();

        var context = CreateContext(new DnsEndPoint("127.0.0.1", port));
        await using var client = await ReadAheadStream.ConnectAsync(context, CancellationToken.None);
        using var server = await accept;
        var serverStream = server.GetStream();

        await client.WriteAsync("ping"u8.ToArray());
        await client.FlushAsync();
        var ping = new byte[4];
        await serverStream.ReadExactlyAsync(ping);
        Assert.Equal("ping"u8.ToArray(), ping);

        await serverStream.WriteAsync("pong"u8.ToArray());
        server.Client.Shutdown(SocketShutdown.Send);
        var pong = new MemoryStream();
        await client.CopyToAsync(pong);
        Assert.Equal("pong"u8.ToArray(), pong.ToArray());
    }

    // SocketsHttpConnectionContext has no public constructor: the handler makes one per connection.
    private static SocketsHttpConnectionContext CreateContext(DnsEndPoint endPoint) =>
        (SocketsHttpConnectionContext)typeof(SocketsHttpConnectionContext)
            .GetConstructors(System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)[0]
            .Invoke([endPoint, new HttpRequestMessage()]);

    private sealed class CountingStream(Stream inner) : Stream
    {
        public int Reads { get; private set; }

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count)
        {
            Reads++;
            return inner.Read(buffer, offset, count);
        }

        public override int Read(Span<byte> buffer)
        {
            Reads++;
            return inner.Read(buffer);
        }

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Reads++;
            return inner.ReadAsync(buffer, cancellationToken);
        }

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
