using System.Diagnostics;
using Rbs.JBazel.Sync;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.JBazel.Sync;

[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class ScratchPerf(ITestOutputHelper output)
{
    [Fact]
    public void Phases()
    {
        using var tree = new SyncTree();
        for (var d = 0; d < 100; d++)
        {
            var dir = tree.Mkdir($"pkg{d:D3}/src");
            for (var f = 0; f < 100; f++)
            {
                var path = Path.Combine(dir, $"file{f:D3}.txt");
                File.WriteAllText(path, $"content {d} {f}");
                File.SetLastWriteTimeUtc(path, SyncTree.OldTime);
            }
        }

        tree.Write(".gitignore", "*.o\nbuild/\n");
        tree.Build(cacheFile: tree.CacheFile);
        for (var round = 0; round < 3; round++)
        {
            var sw = Stopwatch.StartNew();
            var walk = WorkspaceWalker.Walk(tree.Root, WalkOptions.Default, default);
            var tWalk = sw.ElapsedMilliseconds;
            sw.Restart();
            var cache = DigestCache.Load(tree.CacheFile);
            var tLoad = sw.ElapsedMilliseconds;
            sw.Restart();
            foreach (var e in walk.Entries)
            {
                cache.TryGet(e.Path, e.Stat, out _);
            }

            var tGet = sw.ElapsedMilliseconds;
            sw.Restart();
            var m = tree.Build(cacheFile: tree.CacheFile);
            var tAll = sw.ElapsedMilliseconds;
            sw.Restart();
            Manifest.ComputeDigest(m.Entries);
            var tDigest = sw.ElapsedMilliseconds;
            sw.Restart();
            for (var i = 0; i < 10000; i++)
            {
                FileStats.Get(walk.Entries[i].FullPath, false);
            }

            var tStat = sw.ElapsedMilliseconds;
            TestLog.Write(output, $"walk {tWalk} load {tLoad} get {tGet} all {tAll} digest {tDigest} stat {tStat}");
        }
    }
}
