using System.Diagnostics;
using System.Security.Cryptography;
using Microsoft.Extensions.Time.Testing;
using Rbs.JBazel.Sync;
using Rbs.Tests.Infrastructure;
using Rbs.V1;

namespace Rbs.Tests.JBazel.Sync;

/// <summary>The local digest cache: a no-op walk hashes nothing, and a changed file is never missed.</summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class DigestCacheTests(ITestOutputHelper output) : IDisposable
{
    private readonly SyncTree _tree = new();

    public void Dispose() => _tree.Dispose();

    [Fact]
    public void SecondWalkHashesNothingAndGivesTheSameManifest()
    {
        _tree.Write("a.txt", "alpha");
        _tree.Write("b/c.bin", [0, 1, 2, 255]);
        var first = _tree.Build(cacheFile: _tree.CacheFile);
        Assert.Equal(2, first.FilesHashed);
        Assert.True(File.Exists(_tree.CacheFile));

        var second = _tree.Build(cacheFile: _tree.CacheFile);
        Assert.Equal(0, second.FilesHashed);
        Assert.Equal(2, second.CacheHits);
        Assert.Equal(first.Digest, second.Digest);
        Assert.Equal(SHA256.HashData("alpha"u8), second.Entries.Single(e => e.Path == "a.txt").Digest.ToByteArray());
    }

    [Fact]
    public void TheCacheFileIsRewrittenOnlyWhenSomethingChanged()
    {
        _tree.Write("a.txt", "alpha");
        _tree.Build(cacheFile: _tree.CacheFile);
        var written = File.GetLastWriteTimeUtc(_tree.CacheFile);
        File.SetLastWriteTimeUtc(_tree.CacheFile, written.AddMinutes(-5));

        _tree.Build(cacheFile: _tree.CacheFile);
        Assert.Equal(written.AddMinutes(-5), File.GetLastWriteTimeUtc(_tree.CacheFile));

        // A deleted file's entry is dropped: that is a change.
        _tree.Write("b.txt", "beta");
        _tree.Build(cacheFile: _tree.CacheFile);
        File.Delete(_tree.FullPath("b.txt"));
        File.SetLastWriteTimeUtc(_tree.CacheFile, written.AddMinutes(-5));
        _tree.Build(cacheFile: _tree.CacheFile);
        Assert.NotEqual(written.AddMinutes(-5), File.GetLastWriteTimeUtc(_tree.CacheFile));
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(_tree.CacheFile)!, "*.tmp"));
    }

    [Fact]
    public void SizeOrMtimeOrInodeChangeMeansRehash()
    {
        var path = _tree.Write("a.txt", "alpha");
        _tree.Build(cacheFile: _tree.CacheFile);

        _tree.Write("a.txt", "alpha, longer");
        var grown = _tree.Build(cacheFile: _tree.CacheFile);
        Assert.Equal(1, grown.FilesHashed);
        Assert.Equal(SHA256.HashData("alpha, longer"u8), grown.Entries[0].Digest.ToByteArray());

        // Same size, same content length, different bytes, different mtime.
        File.WriteAllText(path, "ALPHA, LONGER");
        File.SetLastWriteTimeUtc(path, SyncTree.OldTime.AddSeconds(1));
        var touched = _tree.Build(cacheFile: _tree.CacheFile);
        Assert.Equal(1, touched.FilesHashed);
        Assert.Equal(SHA256.HashData("ALPHA, LONGER"u8), touched.Entries[0].Digest.ToByteArray());

        // Replaced by another file (new inode) with the same size and mtime: still noticed.
        var replacement = path + ".new";
        File.WriteAllText(replacement, "alpha, LONGER");
        File.SetLastWriteTimeUtc(replacement, SyncTree.OldTime.AddSeconds(1));
        File.Move(replacement, path, overwrite: true);
        var replaced = _tree.Build(cacheFile: _tree.CacheFile);
        Assert.Equal(1, replaced.FilesHashed);
        Assert.Equal(SHA256.HashData("alpha, LONGER"u8), replaced.Entries[0].Digest.ToByteArray());
    }

    [Fact]
    public void AFileModifiedWithinASecondOfBeingHashedIsNotTrusted()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var path = _tree.Write("racy.txt", "v1", old: false);
        var mtime = File.GetLastWriteTimeUtc(path);
        clock.SetUtcNow(new DateTimeOffset(mtime).AddMilliseconds(300));

        var first = _tree.Build(cacheFile: _tree.CacheFile, time: clock);
        Assert.Equal(1, first.FilesHashed);

        // Same size and mtime (a write in the same timestamp tick would look exactly like this): rehashed.
        File.WriteAllText(path, "v2");
        File.SetLastWriteTimeUtc(path, mtime);
        clock.Advance(TimeSpan.FromMinutes(1));
        var second = _tree.Build(cacheFile: _tree.CacheFile, time: clock);
        Assert.Equal(1, second.FilesHashed);
        Assert.Equal(SHA256.HashData("v2"u8), second.Entries[0].Digest.ToByteArray());

        // Hashed well after its mtime: now trusted.
        var third = _tree.Build(cacheFile: _tree.CacheFile, time: clock);
        Assert.Equal(0, third.FilesHashed);
    }

    [Theory]
    [InlineData("garbage")]
    [InlineData("truncated")]
    [InlineData("flipped")]
    [InlineData("empty")]
    public void ACorruptCacheIsIgnoredAndRebuilt(string damage)
    {
        _tree.Write("a.txt", "alpha");
        _tree.Write("b.txt", "beta");
        var good = _tree.Build(cacheFile: _tree.CacheFile);
        var bytes = File.ReadAllBytes(_tree.CacheFile);
        byte[] broken = damage switch
        {
            "garbage" => "this is not a cache at all, just some text"u8.ToArray(),
            "truncated" => bytes[..(bytes.Length / 2)],
            "flipped" => Flip(bytes, 20),
            _ => [],
        };
        File.WriteAllBytes(_tree.CacheFile, broken);

        var rebuilt = _tree.Build(cacheFile: _tree.CacheFile);
        Assert.Equal(2, rebuilt.FilesHashed);
        Assert.Equal(good.Digest, rebuilt.Digest);
        Assert.Equal(0, _tree.Build(cacheFile: _tree.CacheFile).FilesHashed);
    }

    [Fact]
    public void CacheLocationFollowsXdgCacheHome()
    {
        Assert.Equal("/x/cache/jbazel/sync/abc.cache", DigestCache.PathFor("/x/cache", "/home/u", "abc"));
        Assert.Equal("/home/u/.cache/jbazel/sync/abc.cache", DigestCache.PathFor(null, "/home/u", "abc"));
        Assert.Equal("/home/u/.cache/jbazel/sync/abc.cache", DigestCache.PathFor("relative/ignored", "/home/u", "abc"));
        Assert.Null(DigestCache.PathFor(null, null, "abc"));
    }

    [Fact]
    public void ManifestDigestIsDeterministicAndDefinedOverDelimitedEntries()
    {
        using var other = new SyncTree();
        // The same tree, created in a different order.
        foreach (var (tree, order) in new[] { (_tree, false), (other, true) })
        {
            var files = new[] { ("z/last", "1"), ("a/first", "2"), ("m/é", "3"), ("m/e", "4") };
            foreach (var (path, content) in order ? files.Reverse() : files)
            {
                tree.Write(path, content);
            }

            tree.Mkdir("empty");
            tree.Symlink("link", "a/first");
        }

        var a = _tree.Build();
        var b = other.Build();
        Assert.Equal(a.Digest, b.Digest);
        Assert.Equal(SyncTree.Describe(a.Entries), SyncTree.Describe(b.Entries));

        using var stream = new MemoryStream();
        foreach (var entry in a.Entries)
        {
            Google.Protobuf.MessageExtensions.WriteDelimitedTo(entry, stream);
        }

        Assert.Equal(SHA256.HashData(stream.ToArray()), a.Digest);
        Assert.Equal(4UL, a.TotalBytes);

        // Any change to an entry changes the digest: here only an execute bit.
        File.SetUnixFileMode(other.FullPath("a/first"), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        Assert.NotEqual(a.Digest, other.Build().Digest);
    }

    [Fact]
    public void NoOpWalkOfTenThousandFilesIsFast()
    {
        for (var d = 0; d < 100; d++)
        {
            var dir = _tree.Mkdir($"pkg{d:D3}/src");
            for (var f = 0; f < 100; f++)
            {
                var path = Path.Combine(dir, $"file{f:D3}.txt");
                File.WriteAllText(path, $"content {d} {f}");
                File.SetLastWriteTimeUtc(path, SyncTree.OldTime);
            }
        }

        _tree.Write(".gitignore", "*.o\nbuild/\n");
        var first = _tree.Build(cacheFile: _tree.CacheFile);
        Assert.Equal(10_001, first.FilesHashed);

        var best = long.MaxValue;
        var bestCpu = TimeSpan.MaxValue;
        for (var i = 0; i < 5; i++)
        {
            // CPU time as well as wall time: on a shared machine the wall clock mostly measures the neighbours.
            var cpu = Process.GetCurrentProcess().TotalProcessorTime;
            var stopwatch = Stopwatch.StartNew();
            var noop = _tree.Build(cacheFile: _tree.CacheFile);
            stopwatch.Stop();
            cpu = Process.GetCurrentProcess().TotalProcessorTime - cpu;
            Assert.Equal(0, noop.FilesHashed);
            Assert.Equal(first.Digest, noop.Digest);
            best = Math.Min(best, stopwatch.ElapsedMilliseconds);
            bestCpu = cpu < bestCpu ? cpu : bestCpu;
        }

        TestLog.Write(output, $"no-op walk of {first.Entries.Count} entries: best of 5 = {best} ms wall, {bestCpu.TotalMilliseconds:0} ms CPU (load average {File.ReadAllText("/proc/loadavg").Split(' ')[0]})");
        // Generous: the goal is well under 100 ms; a shared CI core must not make this flaky.
        Assert.InRange(best, 0, 2000);
    }

    private static byte[] Flip(byte[] bytes, int index)
    {
        var copy = bytes.ToArray();
        copy[index] ^= 0x40;
        return copy;
    }
}
