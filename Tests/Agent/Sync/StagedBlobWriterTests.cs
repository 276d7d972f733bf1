using System.Text;
using Rbs.Agent.Sync;

namespace Rbs.Tests.Agent.Sync;

/// <summary>
/// The agent's staging writer on a real directory: a blob gets its digest name only with its last (verified) chunk,
/// chunks land at their offsets, and a failure to write reaches the receiver as the file system's own exception.
/// </summary>
public sealed class StagedBlobWriterTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);
    private readonly DirectoryInfo _staging = Directory.CreateTempSubdirectory("rbs-staged-writer-");

    public void Dispose() => _staging.Delete(recursive: true);

    [Fact]
    public async Task ABlobWrittenInChunksGetsItsNameOnlyWithItsLastChunk()
    {
        var staged = Path.Combine(_staging.FullName, "blob");
        await using var writer = new StagedBlobWriter();
        await writer.WriteAsync(staged, Encoding.ASCII.GetBytes("hello "), 0, last: false, CancellationToken.None);
        await writer.WriteAsync(staged, Encoding.ASCII.GetBytes("world"), 6, last: false, CancellationToken.None);
        await writer.WriteAsync(Path.Combine(_staging.FullName, "other"), Encoding.ASCII.GetBytes("x"), 0, last: true, CancellationToken.None);
        await writer.CompleteAsync().WaitAsync(Timeout);

        // The first blob never got its last chunk: it stays a .part file; the second one is complete.
        Assert.False(File.Exists(staged));
        Assert.Equal("hello world", await File.ReadAllTextAsync(staged + ".part"));
        Assert.Equal("x", await File.ReadAllTextAsync(Path.Combine(_staging.FullName, "other")));
        Assert.False(File.Exists(Path.Combine(_staging.FullName, "other.part")));
    }

    [Fact]
    public async Task ManySmallBlobsAreAllWrittenWhateverTheQueueHolds()
    {
        var count = StagedBlobWriter.WritesInFlight * 4;
        await using (var writer = new StagedBlobWriter())
        {
            for (var i = 0; i < count; i++)
            {
                var data = Encoding.ASCII.GetBytes($"blob {i}");
                await writer.WriteAsync(Path.Combine(_staging.FullName, $"b{i}"), data, 0, last: true, CancellationToken.None);
            }

            await writer.CompleteAsync().WaitAsync(Timeout);
        }

        for (var i = 0; i < count; i++)
        {
            Assert.Equal($"blob {i}", await File.ReadAllTextAsync(Path.Combine(_staging.FullName, $"b{i}")));
        }

        Assert.Empty(Directory.EnumerateFiles(_staging.FullName, "*.part"));
    }

    [Fact]
    public async Task AFailedWriteReachesTheReceiverAsTheFileSystemsException()
    {
        var missing = Path.Combine(_staging.FullName, "no-such-shard", "blob");
        await using var writer = new StagedBlobWriter();
        await writer.WriteAsync(missing, new byte[] { 1 }, 0, last: true, CancellationToken.None);

        // Whichever call sees the writer stopped, the receiver gets the file system's exception (the disk-full
        // mapping depends on it), never a closed channel.
        var failure = await Assert.ThrowsAnyAsync<IOException>(async () =>
        {
            for (var i = 0; i < StagedBlobWriter.WritesInFlight * 2; i++)
            {
                await writer.WriteAsync(missing, new byte[] { 1 }, 0, last: true, CancellationToken.None);
            }

            await writer.CompleteAsync().WaitAsync(Timeout);
        });
        Assert.IsType<DirectoryNotFoundException>(failure);
    }
}
