using System.Text;
using Grpc.Core;
using Microsoft.Extensions.Logging.Abstractions;
using Rbs.Agent.Bazelrc;
using Rbs.JBazel.Sync;
using Rbs.V1;

namespace Rbs.Tests.JBazel.Sync;

/// <summary>
/// Which bazelrc files jbazel carries to an agent with its own workspace copy, and what the agent makes of them
/// (the real <see cref="ClientBazelrcStore"/>, which writes the files bazel then reads).
/// </summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class ClientRcFilesTests : IDisposable
{
    private readonly SyncTree _tree = new();
    private readonly ClientBazelrcStore _store = new(NullLogger<ClientBazelrcStore>.Instance);

    public ClientRcFilesTests()
    {
        Home = Path.Combine(_tree.Base, "home");
        Directory.CreateDirectory(Home);
    }

    private string Home { get; }

    public void Dispose()
    {
        _store.Dispose();
        _tree.Dispose();
    }

    [Fact]
    public void WorkspaceThenHomeThenEachBazelrcInOrderAndTheRcOptionsLeaveTheCommandLine()
    {
        _tree.Write(".bazelrc", "build --define=from=workspace\n");
        File.WriteAllText(Path.Combine(Home, ".bazelrc"), "build --define=from=home\n");
        var laptopRc = Path.Combine(_tree.Base, "laptop.bazelrc");
        File.WriteAllText(laptopRc, "build --define=from=laptop\n");
        _tree.Write("tools/ci.bazelrc", "build --define=from=ci\n");

        var collected = Collect(["--output_user_root", "/tmp/x", "--bazelrc", laptopRc, "--home_rc", "--bazelrc=tools/ci.bazelrc", "build", "--bazelrc=not-a-startup-option", "//..."]);
        Assert.Equal(["--output_user_root", "/tmp/x", "build", "--bazelrc=not-a-startup-option", "//..."], collected.BazelArgs);
        Assert.Equal(["build --define=from=workspace\n", "build --define=from=home\n", "build --define=from=laptop\n", "build --define=from=ci\n"], TopLevelContents(collected));
        Assert.Equal([".bazelrc", "tools/ci.bazelrc"], collected.WorkspaceFiles);

        var args = _store.Arguments(Start(collected));
        Assert.Equal(["--nohome_rc", "--noworkspace_rc"], args.Take(2));
        Assert.Equal(4, args.Take(6).Count(arg => arg.StartsWith("--bazelrc=", StringComparison.Ordinal)));
        Assert.Equal(collected.BazelArgs, args.Skip(6));
    }

    [Fact]
    public void NoHomeRcNoWorkspaceRcAndDevNullAreHonoured()
    {
        _tree.Write(".bazelrc", "build --define=from=workspace\n");
        File.WriteAllText(Path.Combine(Home, ".bazelrc"), "build --define=from=home\n");
        var first = Path.Combine(_tree.Base, "first.bazelrc");
        File.WriteAllText(first, "build --define=from=first\n");

        var collected = Collect(["--noworkspace_rc", "--nohome_rc", $"--bazelrc={first}", "--bazelrc=/dev/null", "--bazelrc=/does/not/matter", "info"]);
        Assert.Equal(["info"], collected.BazelArgs);
        Assert.Equal(["build --define=from=first\n"], TopLevelContents(collected));
        Assert.Empty(collected.WorkspaceFiles);

        // A later --home_rc wins, as in bazel.
        Assert.Equal(["build --define=from=home\n"], TopLevelContents(Collect(["--nohome_rc", "--noworkspace_rc", "--home_rc", "info"])));
    }

    [Fact]
    public void IgnoreAllRcFilesSendsNothingAndLeavesTheArgumentsAlone()
    {
        File.WriteAllText(Path.Combine(Home, ".bazelrc"), "build --define=from=home\n");
        string[] args = ["--ignore_all_rc_files", "--bazelrc=/x", "build"];
        var collected = Collect(args);
        Assert.Null(collected.Proto);
        Assert.Equal(args, collected.BazelArgs);
    }

    [Fact]
    public void AnUnreadableBazelrcFailsLikeBazel()
    {
        var ex = Assert.Throws<BazelRcException>(() => Collect(["--bazelrc=missing.rc", "build"]));
        Assert.Equal($"Error: Unable to read .bazelrc file '{Path.Combine(_tree.Root, "missing.rc")}'.", ex.Message);
    }

    [Fact]
    public void ImportsAreFollowedRecursivelyAndPointAtTheAgentsCopies()
    {
        var shared = Path.Combine(_tree.Base, "shared");
        Directory.CreateDirectory(shared);
        File.WriteAllText(Path.Combine(shared, "team.bazelrc"), "build --define=team=1\ntry-import " + Path.Combine(shared, "nested.bazelrc") + "\n");
        File.WriteAllText(Path.Combine(shared, "nested.bazelrc"), "build --define=nested=1\n");
        _tree.Write("user.bazelrc", "build --define=user=1\n");
        _tree.Write(".bazelrc",
            "build --define=a=1 \\\n  --define=b=2\n" +
            "try-import %workspace%/user.bazelrc\n" +
            "  import \"" + Path.Combine(shared, "team.bazelrc") + "\"  # a comment\n" +
            "try-import /no/such/file.bazelrc\n" +
            "import relative.bazelrc\n");
        _tree.Write("relative.bazelrc", "build --define=relative=1\n");

        var collected = Collect(["build"]);
        Assert.Equal([".bazelrc", "relative.bazelrc", "user.bazelrc"], collected.WorkspaceFiles);
        Assert.Equal(5, collected.Proto!.Files.Count);

        var args = _store.Arguments(Start(collected));
        var workspaceCopy = File.ReadAllText(args[2]["--bazelrc=".Length..]);
        var lines = workspaceCopy.Split('\n');
        // Continuation lines are joined the way bazel joins them before reading.
        Assert.Equal("build --define=a=1   --define=b=2", lines[0]);
        Assert.StartsWith("try-import /", lines[1], StringComparison.Ordinal);
        Assert.Equal("build --define=user=1\n", File.ReadAllText(lines[1]["try-import ".Length..]));
        var team = File.ReadAllText(lines[2]["import ".Length..]);
        Assert.StartsWith("build --define=team=1\ntry-import /", team, StringComparison.Ordinal);
        Assert.Equal("build --define=nested=1\n", File.ReadAllText(team.Split('\n')[1]["try-import ".Length..]));
        // Missing here, skipped here: the agent must not read a file of that name of its own.
        Assert.Equal("# rbs: skipped, not on the client: try-import /no/such/file.bazelrc", lines[3]);
        Assert.Equal("build --define=relative=1\n", File.ReadAllText(lines[4]["import ".Length..]));
    }

    [Fact]
    public void BytesThatAreNotUtf8ArriveUnchangedAndUnchangedFilesKeepTheirPaths()
    {
        var bytes = new byte[] { (byte)'b', (byte)'u', (byte)'i', (byte)'l', (byte)'d', (byte)' ', 0xFF, 0xC3, 0x28, (byte)'\n' };
        File.WriteAllBytes(Path.Combine(Home, ".bazelrc"), bytes);
        var first = _store.Arguments(Start(Collect(["build"])));
        var path = first[2]["--bazelrc=".Length..];
        Assert.Equal(bytes, File.ReadAllBytes(path));
        var written = File.GetLastWriteTimeUtc(path);

        var again = _store.Arguments(Start(Collect(["build"])));
        Assert.Equal(first, again);
        Assert.Equal(written, File.GetLastWriteTimeUtc(path));
    }

    [Fact]
    public void TheAgentRefusesForwardReferencesAndTooMuch()
    {
        var forward = new ClientBazelrc { TopLevel = { 0 } };
        forward.Files.Add(new BazelrcFile { Parts = { new BazelrcPart { File = 0 } } });
        var ex = Assert.Throws<RpcException>(() => _store.Arguments(new StartCommand { ClientBazelrc = forward }));
        Assert.Equal(StatusCode.InvalidArgument, ex.StatusCode);

        var big = new ClientBazelrc();
        big.Files.Add(new BazelrcFile { Parts = { new BazelrcPart { Text = Google.Protobuf.ByteString.CopyFrom(new byte[ClientBazelrcStore.MaxTotalBytes + 1]) } } });
        Assert.Equal(StatusCode.InvalidArgument, Assert.Throws<RpcException>(() => _store.Arguments(new StartCommand { ClientBazelrc = big })).StatusCode);
    }

    [Theory]
    [InlineData("/tmp/rbs-agent-bazelrc-x/ab.bazelrc", "/tmp/rbs-agent-bazelrc-x/ab.bazelrc")]
    [InlineData("/tmp/a b/#x", "'/tmp/a b/#x'")]
    [InlineData("/tmp/it's", "\"/tmp/it's\"")]
    public void PathsAreQuotedForBazelsTokenizerOnlyWhenNeeded(string path, string quoted)
    {
        Assert.Equal(quoted, ClientBazelrcStore.Quote(path));
        Assert.Equal(["import", path], RcTokenizer.Tokenize("import " + quoted));
    }

    private ClientRcFiles Collect(IReadOnlyList<string> args) => ClientRcFiles.Collect(args, _tree.Root, _tree.Root, Home);

    private static StartCommand Start(ClientRcFiles collected)
    {
        var start = new StartCommand { ClientBazelrc = collected.Proto };
        start.Args.AddRange(collected.BazelArgs);
        return start;
    }

    private static List<string> TopLevelContents(ClientRcFiles collected) =>
        collected.Proto!.TopLevel.Select(index => Encoding.UTF8.GetString(
            collected.Proto.Files[(int)index].Parts.SelectMany(part => part.Text.ToByteArray()).ToArray())).ToList();
}
