namespace Rbs.Tests.JBazel;

/// <summary>A temporary bazel workspace (MODULE.bazel at its root) plus an empty HOME, deleted on dispose.</summary>
public sealed class TempWorkspace : IDisposable
{
    public TempWorkspace(string marker = "MODULE.bazel")
    {
        Base = Directory.CreateTempSubdirectory("jbazel-test-").FullName;
        Root = Path.Combine(Base, "ws");
        Home = Path.Combine(Base, "home");
        Directory.CreateDirectory(Root);
        Directory.CreateDirectory(Home);
        File.WriteAllText(Path.Combine(Root, marker), "");
    }

    public string Base { get; }

    public string Root { get; }

    public string Home { get; }

    public string CreateDirectory(string relative)
    {
        var path = Path.Combine(Root, relative);
        Directory.CreateDirectory(path);
        return path;
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Base, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
